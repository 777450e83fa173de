"""One way to turn a config mapping into a typed pydantic model, and its errors into one line.

Every entry point that validates user input (a study YAML, `--set KEY=VALUE`, a training
config, a verification policy, a compose strategy, a generator recipe) goes through
`validated`: the first error becomes a `FersynthError` naming where it is as a YAML path
(`arms[2].n`, `generators.own.train.max_minutes`), with a "did you mean" hint for an unknown
key. Discriminated unions (a generator's `kind`, an arm's `strategy`) are followed through
their tag, which is left out of the path.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fersynth.errors import FersynthError

M = TypeVar("M", bound=BaseModel)


def yaml_path(loc, data=None) -> str:
    """`('arms', 2, 'append', 'n')` -> `arms[2].n`: a discriminated union's tag (a key that is
    not in the input but equals its `kind` / `strategy`) is dropped."""
    out = ""
    cur = data
    for p in loc:
        if isinstance(cur, dict) and isinstance(p, str) and p not in cur and p in _tags(cur):
            continue  # the union member pydantic tried, not a key of the YAML
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        cur = _step(cur, p)
    return out


def _tags(d: dict) -> set:
    return {str(v) for k, v in d.items() if k in ("kind", "strategy") and isinstance(v, str | int)}


def _step(cur, p):
    if isinstance(cur, dict):
        return cur.get(p)
    if isinstance(cur, list) and isinstance(p, int) and 0 <= p < len(cur):
        return cur[p]
    return None


def _model_at(model: type[BaseModel], loc, data) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of `loc` (for an unknown key's hint)."""
    ann: Any = model
    cur = data
    for p in loc:
        if isinstance(cur, dict) and isinstance(p, str) and p not in cur and p in _tags(cur):
            ann = _union_member(ann, p)
            continue
        ann = _inner(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            f = ann.model_fields.get(str(p))
            ann = f.annotation if f is not None else None
        elif typing.get_origin(ann) in (dict, list):
            ann = typing.get_args(ann)[-1]
        else:
            return None
        cur = _step(cur, p)
    ann = _inner(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _inner(ann):
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    args = [a for a in typing.get_args(ann) if a is not type(None)] if _is_union(ann) else None
    if args is not None and len(args) == 1:
        return _inner(args[0])
    return ann


def _is_union(ann) -> bool:
    import types

    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _union_member(ann, tag: str):
    ann = _inner(ann)
    if typing.get_origin(ann) in (dict, list):
        ann = _inner(typing.get_args(ann)[-1])
    for m in typing.get_args(ann) if _is_union(ann) else (ann,):
        m = _inner(m)
        if isinstance(m, type) and issubclass(m, BaseModel):
            for key in ("kind", "strategy"):
                f = m.model_fields.get(key)
                if f is not None and tag in [str(a) for a in typing.get_args(f.annotation)]:
                    return m
    return None


def validated(model: type[M], data: Any, where: str = "config", hint: str | None = None) -> M:
    """`model.model_validate(data)`, or one FersynthError: `WHERE: PATH: message`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error_from(e, model, data, where, hint) from None


def error_from(e: ValidationError, model: type[BaseModel], data, where: str, hint: str | None = None) -> FersynthError:
    err = e.errors()[0]
    path = yaml_path(err["loc"], data if isinstance(data, dict) else None)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, err["loc"][:-1], data)
        known = [k for k in (owner.model_fields if owner else {})]
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else (f"known keys: {', '.join(known)}" if known else hint)
        return FersynthError(f"{where}: unknown key '{path}'", hint=hint)
    if err["type"] == "union_tag_invalid":
        import re

        ctx = err.get("ctx") or {}
        field_, tag = str(ctx.get("discriminator", "tag")).strip("'"), str(ctx.get("tag"))
        known = re.findall(r"'([^']+)'", str(ctx.get("expected_tags", "")))
        close = difflib.get_close_matches(tag, known, n=1)
        return FersynthError(f"{where}: {path}.{field_}: unknown {field_} '{tag}'",
                             hint=f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}")
    return FersynthError(f"{where}: {path or '(top level)'}: {msg}", hint=hint)


def set_dotted(d: dict, dotted: str, value) -> None:
    """`--set a.b.2.c=VALUE` into a nested mapping (list items by index; one past the end appends)."""
    parts = dotted.split(".")
    cur = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise FersynthError(f"--set {dotted}: '{p}' is not an index of {'.'.join(parts[:i]) or 'the config'}") from None
            continue
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict | list):
            raise FersynthError(f"--set {dotted}: '{'.'.join(parts[:i + 1])}' is not a section")
        cur = nxt
    if isinstance(cur, list):
        try:
            i = int(parts[-1])
            if i == len(cur):
                cur.append(value)
            else:
                cur[i] = value
        except (ValueError, IndexError):
            raise FersynthError(f"--set {dotted}: '{parts[-1]}' is not an index (the list has {len(cur)} items)",
                                hint="use an existing index, or the list's length to append") from None
    else:
        cur[parts[-1]] = value


def parse_sets(sets: list[str] | None, example: str = "--set seeds=[0] or --set train.set.epochs=2") -> dict:
    """`KEY=VALUE` strings -> {key: YAML-parsed value}."""
    out = {}
    for s in sets or []:
        if "=" not in s:
            raise FersynthError(f"--set '{s}': expected KEY=VALUE", hint=f"e.g. {example}")
        k, v = s.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out
