"""Which TorchServe a command talks to: the instance of a run directory (``--run-dir``: its ports and keys, a
refused key rotated with the API key), or any other given by its URLs and keys: an existing install, a Kubernetes
Service, a KServe predictor.

    torchserve-accel predict resnet101 photo.jpg --url http://127.0.0.1:8080 --token-file /srv/ts/key_file.json
    torchserve-accel bench resnet101 --url http://127.0.0.1:8080 --token-file key_file.json \\
        --management-url http://127.0.0.1:8081 --metrics-url http://127.0.0.1:8082
    torchserve-accel describe resnet101 --management-url http://127.0.0.1:8081 --token-file key_file.json
    torchserve-accel predict resnet101 photo.jpg --url http://torchserve.serving.svc --token-file token --allow-remote

Keys: ``--token-file`` is TorchServe's key_file.json (every API's key) or a file holding just the key of the
command's own API (inference for predict, bench and soak; management for register, scale, describe, unregister);
``--token`` / ``--management-token`` give one on the command line. No key: no Authorization header (a TorchServe
with token auth off). A key given here is used as it is: when it is refused the command stops and says so, since
there is no API key here to rotate it with.

Loopback only unless ``--allow-remote``: a URL whose host is not a loopback address (127.0.0.0/8, ::1,
``localhost``) is refused, as requests and keys would leave the machine.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests

from torchserve_accel.tools import Log
from torchserve_accel.tools.commands import TOKEN_OPTIONS, URL_OPTIONS
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.paths import DEFAULT_RUN_DIR
from torchserve_accel.tools.torchserve import TorchServe

APIS = ("inference", "management", "metrics")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost`` (names are not resolved: any other name counts as remote)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(url: str, option: str = "--url") -> str:
    """``url`` checked as an API's base URL (http or https, a host, no query) without its trailing slash."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError as err:
        raise TorchServeError(f"{option} {url}: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise TorchServeError(f"{option} {url}: expected http(s)://HOST[:PORT][/PATH], e.g. http://127.0.0.1:8080")
    return url.rstrip("/")


def check_loopback(url: str, allow_remote: bool, option: str = "--url") -> None:
    """Refuses ``url`` when its host is not a loopback address, unless ``allow_remote``."""
    host = urlsplit(url).hostname or ""
    if not allow_remote and not is_loopback(host):
        raise TorchServeError(f"{option} {url}: {host} is not a loopback address; pass --allow-remote to send "
                              "requests (and keys) to another machine")


def read_keys(path: Path, api: str) -> dict[str, str]:
    """The keys in ``path``: TorchServe's key_file.json (``{"inference": {"key": ...}, ...}``: every API's), or a
    file holding one key, taken as ``api``'s."""
    try:
        text = Path(path).read_text().strip()
    except OSError as err:
        raise TorchServeError(f"--token-file {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        keys = {kind: entry.get("key") for kind, entry in data.items() if isinstance(entry, dict)}
        keys = {kind: key for kind, key in keys.items() if isinstance(key, str) and key}
        if not keys:
            raise TorchServeError(f"--token-file {path}: JSON without keys (TorchServe writes "
                                  '{"inference": {"key": ...}, "management": {"key": ...}, ...})')
        return keys
    if not text or len(text.split()) != 1:
        raise TorchServeError(f"--token-file {path}: expected TorchServe's key_file.json or a file holding one key")
    return {api: text}


class TorchServeAt(TorchServe):
    """The API calls of ``TorchServe`` against a server given by ``urls`` ({"inference": ..., "management": ...,
    "metrics": ...}, any of them) and ``keys`` (per API; missing: no Authorization header). Nothing here starts,
    stops or rotates anything."""

    def __init__(self, urls: Mapping[str, str], keys: Mapping[str, str] | None = None, allow_remote: bool = False,
                 key_source: str = "no key given"):
        super().__init__()
        self.urls = {api: base_url(url, URL_OPTIONS[api]) for api, url in urls.items()}
        for api, url in self.urls.items():
            check_loopback(url, allow_remote, URL_OPTIONS[api])
        self._given_keys = dict(keys or {})
        self.remote_allowed = allow_remote
        self.key_source = key_source

    def __repr__(self) -> str:
        return f"TorchServeAt({self.urls})"

    @property
    def info(self) -> Any:
        raise TorchServeError(f"{self!r} was not started here: it has no run directory")

    def url(self, api: str, path: str = "") -> str:
        if api not in self.urls:
            raise TorchServeError(f"no {api} API given: pass {URL_OPTIONS[api]} URL")
        return self.urls[api] + path

    def keys(self) -> dict[str, str]:
        return dict(self._given_keys)

    def key_refused(self, answer: requests.Response) -> bool:
        return super().key_refused(answer) or answer.status_code == 401  # 401: a token proxy's refusal

    def rotate_key(self, kind: str, refused_key: str | None = None) -> None:
        if refused_key is None:
            raise TorchServeError(f"the {kind} API wants a key ({self.key_source}): pass --token-file (TorchServe's "
                                  f"key_file.json, or a file holding the key) or {TOKEN_OPTIONS.get(kind, '--token')}")
        raise TorchServeError(f"the {kind} API refused the key ({self.key_source}); a key given with --token or "
                              "--token-file is used as it is, with nothing here to rotate it: pass a current one "
                              "(TorchServe's keys expire after token_expiration_min; its key_file.json holds the "
                              "current ones)")

    def frontend_pid(self) -> int | None:
        return None

    def pid_alive(self) -> bool:
        return False

    def worker_pids(self) -> list[int]:
        return []

    def log_tail(self, lines: int = 40) -> str:
        return ""

    def start(self, *args: Any, **kwargs: Any) -> None:
        raise TorchServeError(f"{self!r} is not started or stopped from here")

    def stop(self, timeout: float = 60.0, log: Log = print) -> None:
        raise TorchServeError(f"{self!r} is not started or stopped from here")


def open_instance(args: Any, default_run_dir: Path = DEFAULT_RUN_DIR) -> TorchServe:
    """The TorchServe a command's arguments name: the URLs of ``commands.add_target``'s options, else the run
    directory (``--run-dir``, else ``default_run_dir``)."""
    urls = {api: getattr(args, f"{api}_url", None) for api in APIS}
    urls = {api: url for api, url in urls.items() if url}
    tokens = {api: getattr(args, f"{api}_token", None) for api in TOKEN_OPTIONS}
    tokens = {api: token for api, token in tokens.items() if token}
    token_file = getattr(args, "token_file", None)
    if not urls:
        if tokens or token_file is not None:
            raise TorchServeError("--token, --management-token and --token-file go with --url / --management-url "
                                  "(a run directory has its own key_file.json)")
        return TorchServe(getattr(args, "run_dir", default_run_dir))
    if hasattr(args, "run_dir"):
        raise TorchServeError("give either --run-dir or URLs (--url, --management-url), not both")
    keys = read_keys(token_file, args.target_api) if token_file is not None else {}
    keys.update(tokens)
    sources = ([f"--token-file {token_file}"] if token_file is not None else []) + [TOKEN_OPTIONS[a] for a in tokens]
    return TorchServeAt(urls, keys, allow_remote=getattr(args, "allow_remote", False),
                        key_source=", ".join(sources) or "no key given")
