"""Static files from npm: only the onnxruntime-web files the provider tab loads, under static/onnxruntime-web/.

The package's dist/ holds ~150 MB of builds and source maps; listing just the needed files keeps collectstatic small
and serves nothing the page does not use. The files come from node_modules, installed by `npm ci` (make venv).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage, Warning
from django.core.files.storage import FileSystemStorage

PREFIX = "onnxruntime-web"
# ort.wasm.min.mjs runs on WASM alone (CPU, SIMD, threads when cross-origin isolated) with its .mjs/.wasm pair;
# ort.webgpu.min.mjs adds WebGPU and loads the asyncify pair.
FILES = (
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)


def dist_dir() -> Path:
    return Path(settings.BASE_DIR) / "node_modules" / "onnxruntime-web" / "dist"


class OnnxRuntimeWebFinder(BaseFinder):
    def check(self, **kwargs: Any) -> list[CheckMessage]:
        missing = [name for name in FILES if not (dist_dir() / name).is_file()]
        if not missing:
            return []
        message = f"onnxruntime-web is not installed ({missing[0]} missing): run `npm ci` (make venv)"
        return [Warning(message, id="worker_web.W001")]

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        """A path (or [] when not found) by default, a list with find_all, as Django's own finders answer."""
        folder, _, name = path.partition("/")
        found = str(dist_dir() / name) if folder == PREFIX and name in FILES and (dist_dir() / name).is_file() else None
        if find_all:
            return [found] if found else []
        return found or []

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        storage = FileSystemStorage(location=dist_dir())
        storage.prefix = PREFIX  # type: ignore[attr-defined]  # collectstatic copies the files under this folder
        for name in FILES:
            if (dist_dir() / name).is_file():
                yield name, storage
