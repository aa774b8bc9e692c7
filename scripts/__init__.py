"""Command-line tools: archive building, TorchServe lifecycle, clients, the main job (see README)."""
