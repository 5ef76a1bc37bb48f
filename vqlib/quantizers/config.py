"""One way to save and load: recorded constructor arguments + safetensors.

Every vqlib artefact (quantizers, codecs, ``VQLinear``, tokenizers, index
parameters) derives from :class:`ConfigMixin`. The mixin records the arguments
each constructor was called with (the idea of diffusers' ``register_to_config``
without a decorator), so that

* ``obj.config`` is ``{"class_path": ..., "init_args": {...}}``, JSON-safe and
  in the ``class_path``/``init_args`` form LightningCLI and jsonargparse read;
* ``Cls.from_config(config)`` rebuilds the object (untrained);
* ``obj.save_pretrained(dir)`` writes ``config.json`` (the config, a format
  version, the weights' SHA-256 and any non-tensor state) and
  ``model.safetensors`` (the tensors; no pickle), each atomically;
* ``Cls.from_pretrained(dir)`` checks the version and checksum, rebuilds and
  loads; with ``huggingface_hub`` installed it also takes a hub repo id, and
  ``push_to_hub(repo_id)`` uploads the same two files.

``nn.Module`` subclasses save their ``state_dict()`` (``get_extra_state``
values go to ``config.json`` and must be JSON-safe); other classes override
:meth:`ConfigMixin._pretrained_state` and :meth:`ConfigMixin._load_pretrained_state`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write, sha256

__all__ = ["CONFIG_NAME", "ConfigMixin", "FORMAT_VERSION", "WEIGHTS_NAME", "PretrainedFileError", "renamed_argument"]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_FORMAT = "vqlib"


class PretrainedFileError(ValueError):
    """A saved folder that cannot be loaded: missing, damaged, of another class or a newer format."""


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, ConfigMixin):
        return value.config
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a config cannot record as JSON; "
        "pass numbers, strings, lists, dicts or vqlib objects to the constructor"
    )


def resolve_class(path: str, default_module: str = "vqlib.quantizers") -> type:
    """The class named by a ``class_path`` (a bare name is looked up in ``default_module``)."""
    if "." not in path:
        path = f"{default_module}.{path}"
    module_name, _, name = path.rpartition(".")
    try:
        obj = importlib.import_module(module_name)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"unknown class {path!r}: {err}") from None
    if not isinstance(obj, type):
        raise ValueError(f"{path!r} is not a class")
    return obj


def renamed_argument(value: Any, old_value: Any, old: str, new: str, stacklevel: int = 3) -> Any:
    """Resolve a keyword argument ``old`` that was renamed ``new`` (warns; refuses both at once).

    For functions; classes list their renames in ``ConfigMixin._renamed_arguments`` instead.
    """
    if old_value is None:
        return value
    warnings.warn(f"{old}= is deprecated; use {new}= (same meaning)", DeprecationWarning, stacklevel=stacklevel)
    if value is not None:
        raise ValueError(f"pass {new} only: {old} is its deprecated name")
    return old_value


class ConfigMixin:
    """Records constructor arguments; ``config`` / ``from_config`` / ``save_pretrained`` / ``from_pretrained``."""

    #: where ``from_config`` looks up a bare class name
    _config_default_module = "vqlib.quantizers"
    #: ``{"old_name": "new_name"}``: deprecated constructor keywords, accepted with a
    #: DeprecationWarning and recorded under the new name (so a saved config never warns)
    _renamed_arguments: dict[str, str] = {}
    #: constructor arguments that are not configuration (where an object lives), never recorded
    #: (diffusers' ``ignore_for_config``); ``from_pretrained`` takes ``map_location`` instead
    _unrecorded_arguments: tuple[str, ...] = ("device",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        renames = dict(cls.__dict__.get("_renamed_arguments", {}))

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            for old, new in renames.items():
                if old in kw:
                    kw[new] = renamed_argument(kw.get(new), kw.pop(old), old, new)
            # the outermost constructor records (a subclass calling super().__init__ keeps its own)
            if "_init_config" not in self.__dict__:
                try:
                    bound = signature.bind(self, *args, **kw)
                except TypeError as err:
                    known = ", ".join(n for n in signature.parameters if n != "self")
                    raise TypeError(f"{cls.__name__}: {err}; it takes {known}") from None
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop("self")
                for name, p in signature.parameters.items():
                    if p.kind is inspect.Parameter.VAR_KEYWORD:
                        arguments.update(arguments.pop(name, {}))
                for name in type(self)._unrecorded_arguments:
                    arguments.pop(name, None)
                # the object's own class: a subclass that keeps its parent's constructor records itself
                kind = type(self)
                object.__setattr__(self, "_init_config", (f"{kind.__module__}.{kind.__qualname__}", arguments))
            init(self, *args, **kw)

        cls.__init__ = recording_init

    # ---- config ------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}``: the JSON-safe constructor arguments."""
        path, arguments = self._init_config
        return {"class_path": path, "init_args": _jsonable(arguments, f"{type(self).__name__}.init_args")}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """Build an (untrained) object from :attr:`config`."""
        if not isinstance(config, dict) or "class_path" not in config:
            raise ValueError(f"expected a dict with 'class_path' and 'init_args', got {config!r}")
        try:
            target = resolve_class(config["class_path"], cls._config_default_module)
        except ValueError as err:
            raise ValueError(f"unknown {cls.__name__.lower()} {config['class_path']!r}: {err}") from None
        if not issubclass(target, cls):
            raise ValueError(f"{config['class_path']!r} is not a vqlib {cls.__name__}")
        return target(**config.get("init_args", {}))

    # ---- state (override for objects that are not nn.Modules) ----------------

    def _pretrained_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for safetensors, JSON-safe extra state)."""
        if not isinstance(self, torch.nn.Module):
            raise NotImplementedError(f"{type(self).__name__} must define _pretrained_state")
        tensors, extra = {}, {}
        for key, value in self.state_dict().items():
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            else:
                extra[key] = _jsonable(value, f"{type(self).__name__} extra state {key!r}")
        return tensors, extra

    def _load_pretrained_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        if not isinstance(self, torch.nn.Module):
            raise NotImplementedError(f"{type(self).__name__} must define _load_pretrained_state")
        self.load_state_dict({**tensors, **extra}, strict=True)

    @classmethod
    def _upgrade_meta(cls, meta: Any) -> Any:
        """Hook: turn an older class-specific ``config.json`` layout into this one."""
        return meta

    # ---- save / load ----------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        config = self.config  # fails before anything is written when an argument is not JSON-safe
        tensors, extra = self._pretrained_state()
        stored, tied, seen, storages = {}, {}, {}, set()
        for key, value in tensors.items():
            value = value.detach()
            ident = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape, value.stride())
            if value.numel() and ident in seen:
                tied[key] = seen[ident]  # safetensors refuses shared storage; keep one copy
                continue
            seen[ident] = key
            value = value.to("cpu").contiguous()
            if value.numel() and value.untyped_storage().data_ptr() in storages:
                value = value.clone()  # another view of memory already stored (a slice of it): its own copy
            storages.add(value.untyped_storage().data_ptr())
            stored[key] = value
        weights = directory / WEIGHTS_NAME
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(weights, lambda tmp: save_file(stored, tmp, metadata={"format": _FORMAT}))
        meta = {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            **config,
            "extra_state": extra,
            "tied": tied,
            "weights": {"file": WEIGHTS_NAME, "sha256": sha256(weights)},
        }
        text = json.dumps(meta, indent=2)
        atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
        return directory

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", **hub_kwargs):
        """Load what :meth:`save_pretrained` wrote: a local folder, or a hub repo id when
        ``huggingface_hub`` is installed (``hub_kwargs`` go to ``snapshot_download``)."""
        from safetensors.torch import load_file

        directory = _local_folder(path, hub_kwargs)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise PretrainedFileError(f"{directory} holds no {CONFIG_NAME}: not a folder written by save_pretrained")
        try:
            meta = cls._upgrade_meta(json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PretrainedFileError(f"{cfg_path} is not valid JSON: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "class_path" not in meta:
            raise PretrainedFileError(f"{cfg_path} is not a vqlib config (no 'format': 'vqlib' and 'class_path')")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise PretrainedFileError(
                f"{cfg_path} has format version {version!r}; this vqlib reads up to {FORMAT_VERSION}: upgrade vqlib"
            )
        weights = directory / meta["weights"]["file"]
        if not weights.is_file():
            raise PretrainedFileError(f"missing weights file {weights}")
        if sha256(weights) != meta["weights"]["sha256"]:
            raise PretrainedFileError(
                f"{weights} does not match the checksum (SHA-256) in {cfg_path}: the file is damaged or was changed"
            )
        tensors = load_file(str(weights), device=str(map_location))
        for key, source in meta.get("tied", {}).items():
            tensors[key] = tensors[source]
        config = {"class_path": meta["class_path"], "init_args": meta.get("init_args", {})}
        try:
            obj = cls._from_pretrained_state(config, tensors, meta.get("extra_state", {}))
        except ValueError as err:
            raise PretrainedFileError(f"{cfg_path}: {err}") from None
        if isinstance(obj, torch.nn.Module):
            obj.eval()
        return obj

    @classmethod
    def _from_pretrained_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], extra: dict[str, Any]):
        """Build from a loaded config and state (override where an object is rebuilt from its state as a whole)."""
        obj = cls.from_config(config)
        obj._load_pretrained_state(tensors, extra)
        return obj

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload with vqlib", private: bool = False, **kwargs) -> str:
        """Upload ``config.json`` + ``model.safetensors`` to a hub repo (needs ``huggingface_hub``)."""
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise ImportError("push_to_hub needs huggingface_hub: pip install huggingface_hub") from None
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        return str(info)


def _local_folder(path: str | os.PathLike, hub_kwargs: dict) -> Path:
    local = Path(path)
    if local.is_dir():
        return local
    text = str(path)
    # "owner/name" is a hub repo id unless its first part is a local folder ("runs/demo" that is not there yet)
    looks_like_repo = (
        text.count("/") == 1 and not text.startswith((".", "/", "~")) and not local.exists() and not local.parent.exists()
    )
    if looks_like_repo:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise PretrainedFileError(
                f"{text!r} is not a local folder; to load it from the hub, pip install huggingface_hub"
            ) from None
        return Path(snapshot_download(repo_id=text, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], **hub_kwargs))
    raise PretrainedFileError(
        f"{text} is not a folder, so it holds no {CONFIG_NAME}: pass the folder save_pretrained wrote, or a hub repo id"
    )
