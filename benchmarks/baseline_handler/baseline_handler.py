"""Stock-style ResNet-101 handler: the reference our served numbers are compared with (not part of the product).

Written the way most TorchServe users write one (and the way TorchServe's image_classifier example works):
each image decoded with PIL and transformed with torchvision on the CPU, one request at a time; the batch
stacked and copied to the GPU; fp32 eager ResNet-101; softmax and top-5 on the host. Same weights file as
our archive (``resnet101.safetensors``). It emits the same batch counters as our handlers
(``HandlerBatches``, ``HandlerBatchedRequests``) so the load generator reads its mean batch size too.

PyTorch's defaults stand: cuDNN picks conv algorithms per shape and convolutions may use TF32. The one tuning knob,
``handler.torch_threads`` in model-config (the tuned variant sets it to the host's cores over the worker count), caps
each worker's CPU threads: with PyTorch's default of one thread per core in each of ten workers, the CPU transforms
thrash (benchmarks/NOTES.md).
"""

import io
import json
import os

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torchvision import models, transforms


class BaselineResNetHandler:
    def initialize(self, context):
        threads = ((context.model_yaml_config or {}).get("handler") or {}).get("torch_threads")
        if threads:
            torch.set_num_threads(int(threads))
        properties = context.system_properties
        model_dir = properties["model_dir"]
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        self.model = models.resnet101()
        self.model.load_state_dict(load_file(os.path.join(model_dir, "resnet101.safetensors")))
        self.model.to(self.device).eval()
        self.transform = transforms.Compose([
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ])
        labels = os.path.join(model_dir, "imagenet_classes.json")
        self.labels = json.load(open(labels)) if os.path.exists(labels) else None
        self.context = context

    def preprocess(self, data):
        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            image = Image.open(io.BytesIO(image)).convert("RGB")
            images.append(self.transform(image))
        return torch.stack(images).to(self.device)

    def inference(self, batch):
        with torch.no_grad():
            return self.model(batch)

    def postprocess(self, logits):
        probabilities, indices = F.softmax(logits, dim=1).topk(5, dim=1)
        results = []
        for probs, idxs in zip(probabilities.tolist(), indices.tolist()):
            results.append([{"index": i, "label": self.labels[i] if self.labels else str(i), "probability": p}
                            for i, p in zip(idxs, probs)])
        return [json.dumps({"predictions": r}) for r in results]

    def handle(self, data, context):
        self.context = context
        output = self.postprocess(self.inference(self.preprocess(data)))
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            from ts.metrics.metric_type_enum import MetricTypes

            metrics.add_metric("HandlerBatches", 1, "count", metric_type=MetricTypes.COUNTER)
            metrics.add_metric("HandlerBatchedRequests", len(data), "count", metric_type=MetricTypes.COUNTER)
        return output
