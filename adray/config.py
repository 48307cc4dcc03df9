"""One config mechanism: pydantic models whose fields say everything once (type, default, bounds, help,
and the command-line flag), and argparse arguments generated from them.

A config is a :class:`Config` (a pydantic ``BaseModel``): construction validates, a bad value raises
:class:`adray.errors.ConfigError` with one line naming the flag (``adray <cmd>`` prints it and exits 2),
and ``to_dict`` / ``from_dict`` are the JSON round trip. A field that is also a flag carries a
:class:`Flag` in its ``Annotated`` metadata::

    batch_size: Annotated[int, Flag("--batch-size")] = Field(16, ge=1, description="items per batch")

:func:`add_flags` adds the named fields to a parser or argument group, in the order given (the help
output's order), with the field's default and description; :func:`flag_values` reads them back from the
parsed namespace as keyword arguments for the model. Defaults therefore live on the field alone.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo
from pydantic.fields import FieldInfo

from adray.errors import ConfigError

_C = TypeVar("_C", bound="Config")

__all__ = [
    "Config",
    "ConfigError",
    "Flag",
    "Real",
    "add_flags",
    "explain",
    "flag_of",
    "flag_values",
    "one_of",
    "parse_env",
    "parse_options",
    "split_pairs",
]


#: A float setting that keeps an int as given (``2`` stays ``2``, not ``2.0``; pydantic's ``float`` would
#: convert it). Configs hashed into artifact versions use it, so their documents serialise exactly as the
#: dataclasses they replaced did and existing versions stay the same. Flags of this type parse as float.
Real = int | float


@dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line (put it in the field's ``Annotated`` metadata).

    ``option``: the flag (``--batch-size``). ``dest``: the argparse destination when it is not the field
    name (kept for flags whose namespace attribute other code reads). ``repeatable``: ``action="append"``
    with argparse default ``None``, so an absent flag leaves the field's default. ``negate``: a
    ``--no-...`` switch that stores ``False`` in a bool field (a bool field without ``negate`` is a
    ``store_true`` switch). ``type``: the argparse converter (default: the field's int / float type, none
    for text). ``parse``: turns the parsed value into the field's value (``KEY=VALUE`` pairs into a dict,
    ...). ``help``: only where the help must differ from the field's description. ``choices``: the
    allowed values; ``True`` takes them from the field's ``Literal[...]`` type. ``aliases``: further
    option strings of the same flag (``--results`` beside ``--output``).
    """

    option: str
    dest: str | None = None
    metavar: str | None = None
    repeatable: bool = False
    negate: bool = False
    type: Callable[[str], Any] | None = None
    parse: Callable[[Any], Any] | None = None
    help: str | None = None
    choices: tuple[Any, ...] | bool | None = None
    aliases: tuple[str, ...] = ()


class Config(BaseModel):
    """Base of adray's configs: unknown keys are refused, validation errors are one-line ConfigErrors;
    positional arguments fill the fields in declaration order (as the dataclasses they replace did)."""

    model_config = ConfigDict(extra="forbid")
    #: raised for a bad value (a ConfigError subclass, so ``adray <cmd>`` reports it in one line, exit 2)
    error_type: ClassVar[type[Exception]] = ConfigError

    def __init__(self, /, *args: Any, **data: Any) -> None:
        names = list(type(self).model_fields)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional arguments")
        for name, value in zip(names, args):  # positional, in field order (as the dataclasses took them)
            if name in data:
                raise TypeError(f"{type(self).__name__} got two values for {name!r}")
            data[name] = value
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise type(self).error_type(explain(type(self), e)) from None

    def replace(self: _C, **changes: Any) -> _C:
        """A validated copy with ``changes`` (as ``dataclasses.replace`` did for the dataclass configs)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data (tuples become lists, nested configs dicts)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` for unknown keys or bad values."""
        return cls(**data)


def flag_of(field: FieldInfo) -> Flag | None:
    """The :class:`Flag` in a field's metadata, if it is a command-line flag."""
    return next((m for m in field.metadata if isinstance(m, Flag)), None)


def explain(model: type[BaseModel], error: ValidationError) -> str:
    """A pydantic error as one line, each problem named by its flag (else its field path):
    ``invalid <title>: --batch-size must be >= 1, got 0; --input is required``."""
    problems = [_problem(model, item) for item in error.errors()]
    title = model.model_config.get("title") or model.__name__
    return f"invalid {title}: " + "; ".join(problems)


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _problem(model: type[BaseModel], item: Any) -> str:
    loc = item.get("loc") or ()
    field = model.model_fields.get(str(loc[0])) if loc else None
    flag = flag_of(field) if field is not None else None
    where = flag.option if flag and len(loc) == 1 else ".".join(map(str, loc)) or "config"
    kind, ctx, value = item.get("type"), item.get("ctx") or {}, item.get("input")
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"{where} must be {_BOUNDS[kind]} {bound}, got {value!r}"
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where}: unknown setting"
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "value_error":  # a validator's own message (a model-level one names its flags itself)
        return message if not loc or message.startswith(where) else f"{where}: {message}"
    return f"{where}: {message[:1].lower()}{message[1:]} (got {value!r})"


def add_flags(parser: Any, model: type[BaseModel], names: Iterable[str]) -> None:
    """Add the flags of ``model``'s fields ``names`` to ``parser`` (a parser or an argument group)."""
    for name in names:
        field = model.model_fields[name]
        flag = flag_of(field)
        if flag is None:
            raise TypeError(f"{model.__name__}.{name} has no Flag")
        kwargs: dict[str, Any] = {"help": flag.help or field.description, "dest": flag.dest or name}
        if flag.negate:
            kwargs["action"] = "store_false"
        elif field.annotation is bool:
            kwargs["action"] = "store_true"
        elif flag.repeatable:
            element = _scalar_type(_element(field.annotation))
            kwargs.update(action="append", default=None, metavar=flag.metavar, type=flag.type or element)
        else:
            if field.is_required():
                kwargs["required"] = True
            else:
                kwargs["default"] = field.get_default(call_default_factory=True)
            kwargs["type"] = flag.type or _scalar_type(field.annotation)
            if flag.metavar:
                kwargs["metavar"] = flag.metavar
            if flag.choices is True:
                kwargs["choices"] = _literal_values(field.annotation)
            elif flag.choices:
                kwargs["choices"] = flag.choices
        options = (flag.option, *flag.aliases)
        action = parser.add_argument(*options, **{k: v for k, v in kwargs.items() if v is not None})
        action.config_field = f"{model.__name__}.{name}"  # where its default lives (tests check this)


def flag_values(model: type[BaseModel], args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``model`` from the parsed flags of its fields (fields whose flag the parser
    does not have, and repeatable flags not given, are left out: the field's default applies)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        flag = flag_of(field)
        dest = (flag.dest or name) if flag else name
        if flag is None or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if flag.repeatable and value is None:
            continue
        out[name] = flag.parse(value) if flag.parse else value
    return out


def _element(annotation: Any) -> Any:
    """``list[X]`` / ``tuple[X, ...]`` (optionally ``| None``) -> ``X``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(annotation) in (list, tuple) and args:
        return args[0]
    return _element(args[0]) if len(args) == 1 else None


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    """``Literal["a", "b"]`` (optionally ``| None``) -> ``("a", "b")``."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1:
        return _literal_values(args[0])
    raise TypeError(f"Flag(choices=True) needs a Literal field, got {annotation!r}")


def _scalar_type(annotation: Any) -> Callable[[str], Any] | None:
    """int / float for ``int``, ``float``, :data:`Real` and their optional forms; None (argparse's text)
    otherwise."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = float if set(args) == {int, float} else args[0] if len(args) == 1 else None
    return annotation if annotation in (int, float) else None


def one_of(
    values: tuple[Any, ...], message: str = "{field} must be one of {values}, got {value!r}"
) -> AfterValidator:
    """A check to put in a field's ``Annotated`` metadata: a value outside ``values`` is refused with
    ``message`` (formatted with ``field``, ``values`` and ``value``), a one-line ConfigError. For text
    fields that keep a plain ``str`` type and their own wording (a ``Literal`` answers in pydantic's)::

        precision: Annotated[str, one_of(PRECISIONS)] = "auto"
    """

    def check(value: Any, info: ValidationInfo) -> Any:
        if value not in values:
            raise ValueError(message.format(field=info.field_name, values=values, value=value))
        return value

    return AfterValidator(check)


# ------------------------------------------------------------------ KEY=VALUE flags (repeatable)


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["model_name=adray-tiny-clip", "image_size=64"]`` -> dict; values are JSON when they parse."""
    out: dict[str, Any] = {}
    for key, value in split_pairs(pairs, "--detector-option").items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    """``["OMP_WAIT_POLICY=ACTIVE"]`` -> ``{"OMP_WAIT_POLICY": "ACTIVE"}`` (values stay strings)."""
    return split_pairs(pairs, "--actor-env")


def split_pairs(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """``KEY=VALUE`` strings -> dict (split at the first ``=``); a pair without one names ``flag``."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out
