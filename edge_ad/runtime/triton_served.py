"""What a Triton server must serve for a bundle, and the errors that name both when it does not.

`ServedSpec` is what the bundle's meta.json promises (the exporter's config.pbtxt says the same: the
uint8 H x W x 3 input, the raw-map output, a batch axis); `check_config` compares a model's config as
the server reports it (tritonclient's ModelConfig message) with it, and returns the model's
max_batch_size, so the Detector never sends a larger batch. `missing_model` explains a model that is
not ready, from the server's repository index. No torch, no tritonclient import here.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_ad.bundle import Bundle, check_name

__all__ = ["ModelNotServed", "ServedModelMismatch", "ServedSpec", "check_config", "missing_model"]

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}


class ModelNotServed(ConnectionError):
    """The server answers but has none of the bundle's models ready (not in its repository, or not loaded)."""


class ServedModelMismatch(ValueError):
    """The server's model of that name does not take or give what the bundle needs."""


@dataclass(frozen=True)
class ServedSpec:
    """The tensors a served model must have for a bundle: (name, Triton type, dims without the batch)."""

    bundle: str                         # "<path> (<model>)", for messages
    input: tuple[str, str, tuple[int, ...]]
    output: tuple[str, str, tuple[int, ...]]

    @classmethod
    def of(cls, bundle: Bundle) -> "ServedSpec":
        where = str(bundle.path)
        inp, out = bundle.meta["input"], bundle.meta["outputs"][0]
        return cls(f"{bundle.path} ({bundle.model_name})",
                   (check_name(inp["name"], "input.name", where), TRITON_TYPES.get(inp["dtype"], str(inp["dtype"])),
                    (int(inp["height"]), int(inp["width"]), 3)),
                   (check_name(out["name"], "outputs[0].name", where), TRITON_TYPES.get(out["dtype"], str(out["dtype"])),
                    tuple(int(d) for d in out["shape"][1:])))


def check_config(config, spec: ServedSpec, model: str, url: str) -> int:
    """The served model's max_batch_size, after checking its config against `spec`; ServedModelMismatch
    listing every difference otherwise. `config`: tritonclient's ModelConfig message."""
    problems = []
    if config.max_batch_size < 1:
        problems.append(f"max_batch_size is {config.max_batch_size} (no batch axis), the bundle sends batches")
    inputs = {t.name: t for t in config.input}
    problems += _tensor_problems("input", inputs, spec.input)
    if set(inputs) - {spec.input[0]}:
        problems.append(f"it takes inputs {sorted(set(inputs) - {spec.input[0]})} that the client does not send")
    problems += _tensor_problems("output", {t.name: t for t in config.output}, spec.output)
    if problems:
        raise ServedModelMismatch(f"the model {model!r} on the Triton server at {url} does not match the bundle "
                                  f"{spec.bundle}: {'; '.join(problems)}. Serve the repository written by "
                                  f"`edge-ad export BUNDLE --triton DIR` for this bundle, or load the bundle that "
                                  f"model was exported from")
    return int(config.max_batch_size)


def _tensor_problems(kind: str, tensors: dict, want: tuple[str, str, tuple[int, ...]]) -> list[str]:
    name, dtype, dims = want
    if name not in tensors:
        return [f"no {kind} {name!r} (it has {sorted(tensors) or 'none'})"]
    tensor = tensors[name]
    types = tensor.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number      # TYPE_UINT8, ...
    got_type = types[tensor.data_type].name if tensor.data_type in types else str(tensor.data_type)
    got_dims = tuple(int(d) for d in tensor.dims)
    if got_type != dtype or got_dims != dims:
        return [f"{kind} {name!r} is {got_type} {list(got_dims)}, the bundle needs {dtype} {list(dims)}"]
    return []


def missing_model(index: list[dict], candidates: list[str], spec: ServedSpec, url: str) -> ModelNotServed:
    """The error for a server that has none of `candidates` ready, from its repository index
    ([{name, state, reason}], tritonclient's get_model_repository_index as JSON)."""
    known = {m.get("name"): m for m in index}
    found = []
    for name in candidates:
        if name in known:
            state, reason = known[name].get("state") or "not loaded", known[name].get("reason") or ""
            found.append(f"{name!r} is in its repository but {state}{f' ({reason})' if reason else ''}")
        else:
            found.append(f"{name!r} is not in its repository")
    others = sorted(n for n in known if n and n not in candidates)
    listed = f"; it has {', '.join(others[:8])}{', ...' if len(others) > 8 else ''}" if others else ""
    return ModelNotServed(f"the Triton server at {url} has no model ready for the bundle {spec.bundle}: "
                          f"{'; '.join(found)}{listed}. Write the repository with `edge-ad export BUNDLE --triton "
                          f"DIR` and serve it (tritonserver --model-repository DIR), or load the model "
                          f"(POST v2/repository/models/{candidates[-1]}/load) when the server runs in explicit mode")
