"""The forget specification: what a served generator must stop producing, and the gates
the edited model must pass (DESIGN.md, "Forget specification").

The redaction set Omega is the union of the ``sets`` (Kong & Chaudhuri III-D):

* ``data``       - uploaded negatives (Alg. 1);
* ``validity``   - a declarative validity rule v (Alg. 2), never code; operators add rule
  types as Python entry points in group ``lethe.validity`` (see ``checks.py``);
* ``classifier`` - a soft classifier f in [0, 1] and threshold tau, Omega = {f < tau} (Alg. 3);
* ``feedback``   - generated samples marked by a person (seed, n, indices); the shape is
  fixed now, the method (Moon et al.) arrives later.

Every model forbids unknown keys so that a typo (``tua: 0.5``) is an error, not a silently
ignored default. :func:`load_spec` is the one way in: it accepts a path, JSON/YAML text or
bytes, or a dict, and turns every problem into a :class:`SpecError` with one
``path: reason`` line per problem, e.g.::

    sets[1].rule.labels: list should have at least 1 item
    method: 'kong-foo' is not one of auto, kong-data, kong-validity, ...
"""

from __future__ import annotations

import difflib
import hashlib
import json
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from unlearning.errors import SpecError
from unlearning.names import NAME, NAME_RULE, is_name, shown
from unlearning.spec.bounds import MAX_DEPTH, BoundedComposer, check_data, check_text

__all__ = [
    "METHODS",
    "BUILTIN_RULE_TYPES",
    "VALIDITY_ENTRY_POINT_GROUP",
    "SpecValidationError",
    "OneMinusProb",
    "OneMinusEntropy",
    "Score",
    "ClassifierLabelRule",
    "ClassifierScoreRule",
    "BoundaryRule",
    "AnyOfRule",
    "AllOfRule",
    "PluginRule",
    "Rule",
    "DataSet",
    "ValiditySet",
    "ClassifierSet",
    "Marked",
    "FeedbackSet",
    "ForgetSet",
    "Gates",
    "ForgetSpec",
    "load_spec",
    "canonical_json",
    "spec_hash",
    "referenced_classifiers",
    "referenced_files",
    "retain_files",
    "validity_plugins",
    "find_validity_plugin",
    "walk_rules",
]

METHODS: tuple[str, ...] = (
    "auto",
    "kong-data",
    "kong-validity",
    "kong-classifier",
    "adapt-then-unlearn",
    "param-extrapolation",
    "feedback",
    "i2i-encoder",
)
Method = Literal[
    "auto",
    "kong-data",
    "kong-validity",
    "kong-classifier",
    "adapt-then-unlearn",
    "param-extrapolation",
    "feedback",
    "i2i-encoder",
]

VALIDITY_ENTRY_POINT_GROUP = "lethe.validity"
BUILTIN_RULE_TYPES: tuple[str, ...] = (
    "classifier_label",
    "classifier_score",
    "boundary",
    "any_of",
    "all_of",
)


class SpecValidationError(SpecError):
    """A spec failed validation. ``problems`` holds ``(path, reason)`` pairs, one per problem;
    the message is those pairs as ``path: reason`` lines."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" if path else reason for path, reason in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Probability = Annotated[float, Field(allow_inf_nan=False)]


def _classifier_name(name: str) -> str:
    """A registry classifier's name, or the file name of an ONNX classifier uploaded with
    the request: never a path (``../x.onnx``, ``/srv/x.onnx``)."""
    if not is_name(name):
        raise PydanticCustomError(
            "classifier_name",
            "{name} is not a classifier name: use a registry classifier's name or the file name of an "
            "ONNX classifier uploaded with the request ({rule})",
            {"name": shown(name), "rule": NAME_RULE},
        )
    return name


ClassifierName = Annotated[str, AfterValidator(_classifier_name),
                           WithJsonSchema({"type": "string", "pattern": NAME.pattern, "maxLength": 64})]


# --------------------------------------------------------------------------------------
# Scores: soft classifiers f(x) in [0, 1], 0 = "has the property" (Kong & Chaudhuri Alg. 3)
# --------------------------------------------------------------------------------------


# A class: its index, or its name among the classifier's labels ("Trouser"); names are
# resolved against the classifier before Omega is built (``labels.py``).
def _label(value: int | str) -> int | str:
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise PydanticCustomError("label", "should be greater than or equal to 0 (got {value})", {"value": value})
    if isinstance(value, str) and not 1 <= len(value) <= 128:
        raise PydanticCustomError("label", "a label name must have 1 to 128 characters")
    return value


Label = Annotated[Union[int, str], Field(union_mode="left_to_right"), AfterValidator(_label)]


class OneMinusProb(_Strict):
    """f(x) = 1 - softmax(logits(x))[label]: label redaction (IV-A)."""

    type: Literal["one_minus_prob"] = "one_minus_prob"
    label: Label


class OneMinusEntropy(_Strict):
    """f(x) = 1 - Entropy(softmax(logits(x))) / log(#classes): label bias (IV-B); small when
    the classifier is unsure, i.e. on ambiguous samples."""

    type: Literal["one_minus_entropy"] = "one_minus_entropy"


Score = Annotated[Union[OneMinusProb, OneMinusEntropy], Field(discriminator="type")]


# --------------------------------------------------------------------------------------
# Validity rules: each describes the INVALID samples (the part of Omega it contributes)
# --------------------------------------------------------------------------------------


class ClassifierLabelRule(_Strict):
    """Invalid when the classifier's argmax is one of ``labels`` (label redaction, IV-A)."""

    type: Literal["classifier_label"] = "classifier_label"
    classifier: ClassifierName
    labels: list[Label] = Field(min_length=1)


class ClassifierScoreRule(_Strict):
    """Invalid when the soft score f(x) < tau."""

    type: Literal["classifier_score"] = "classifier_score"
    classifier: ClassifierName
    score: Score
    tau: _Probability = Field(0.5, gt=0.0, lt=1.0)


class BoundaryRule(_Strict):
    """The boundary artefact (IV-B, App. F-A): pixels mapped to [0, 1]; s(x) = sum of the
    pixels within ``margin`` of the border, over all channels; invalid when s(x) >= max_sum
    (the paper's v(x) = 1[s(x) < tau_b]; tau_b = 4.25 for margin 1, 10.0 for margin 2 on
    MNIST 28x28)."""

    type: Literal["boundary"] = "boundary"
    margin: int = Field(ge=1)
    max_sum: float = Field(gt=0.0, allow_inf_nan=False)


class AnyOfRule(_Strict):
    """Invalid if ANY sub-rule says invalid (union of their Omegas; v = min_k v_k)."""

    type: Literal["any_of"] = "any_of"
    rules: list[Rule] = Field(min_length=1)


class AllOfRule(_Strict):
    """Invalid only if ALL sub-rules say invalid (intersection of their Omegas)."""

    type: Literal["all_of"] = "all_of"
    rules: list[Rule] = Field(min_length=1)


def validity_plugins() -> dict[str, EntryPoint]:
    """The operator's validity rule types: entry points in group ``lethe.validity``, by name
    (the first one wins if two distributions register the same name)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=VALIDITY_ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def find_validity_plugin(type_: str) -> EntryPoint | None:
    return validity_plugins().get(type_)


def _known_rule_types() -> str:
    plugins = sorted(validity_plugins())
    text = ", ".join(BUILTIN_RULE_TYPES)
    return text + (f"; plugins: {', '.join(plugins)}" if plugins else "; no plugins registered")


class PluginRule(BaseModel):
    """A rule type registered by the operator as an entry point in group ``lethe.validity``.
    Every key other than ``type`` is kept in ``params`` and passed to the plugin's factory;
    it serialises back to the same flat mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_params(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {"type": data.get("type"), "params": {k: v for k, v in data.items() if k != "type"}}
        return data

    @field_validator("type")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value in BUILTIN_RULE_TYPES or find_validity_plugin(value) is None:
            raise PydanticCustomError(
                "unknown_rule_type",
                "unknown rule type {type}; known types: {known}",
                {"type": repr(value), "known": _known_rule_types()},
            )
        return value

    @model_serializer(mode="plain")
    def _flat(self) -> dict[str, Any]:
        return {"type": self.type, **self.params}


_RULE_TAGS: dict[type, str] = {
    ClassifierLabelRule: "classifier_label",
    ClassifierScoreRule: "classifier_score",
    BoundaryRule: "boundary",
    AnyOfRule: "any_of",
    AllOfRule: "all_of",
    PluginRule: "plugin",
}


def _rule_tag(value: Any) -> str | None:
    """Built-in types dispatch to their model; any other ``type`` is a plugin rule."""
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None:
            return None
        return kind if kind in BUILTIN_RULE_TYPES else "plugin"
    return _RULE_TAGS.get(type(value))


Rule = Annotated[
    Union[
        Annotated[ClassifierLabelRule, Tag("classifier_label")],
        Annotated[ClassifierScoreRule, Tag("classifier_score")],
        Annotated[BoundaryRule, Tag("boundary")],
        Annotated[AnyOfRule, Tag("any_of")],
        Annotated[AllOfRule, Tag("all_of")],
        Annotated[PluginRule, Tag("plugin")],
    ],
    Discriminator(_rule_tag),
]

AnyOfRule.model_rebuild()
AllOfRule.model_rebuild()


# --------------------------------------------------------------------------------------
# Sets: Omega is their union
# --------------------------------------------------------------------------------------


MAX_FILE_NAME = 128  # as an upload's name may be; far under the file system's 255 bytes


def _plain_file_name(name: str) -> str:
    if not name:
        raise PydanticCustomError("file_name", "file name is empty")
    if len(name) > MAX_FILE_NAME:
        raise PydanticCustomError("file_name", "{name} is longer than {n} characters",
                                  {"name": shown(name), "n": MAX_FILE_NAME})
    if "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise PydanticCustomError(
            "file_name",
            "{name} is not a plain file name (no path separators, '.' or '..')",
            {"name": shown(name)},
        )
    return name


FileName = Annotated[str, AfterValidator(_plain_file_name)]


class DataSet(_Strict):
    """Uploaded negatives, named by the uploaded file names (Alg. 1)."""

    kind: Literal["data"] = "data"
    files: list[FileName] = Field(min_length=1)


class ValiditySet(_Strict):
    """Omega = the samples a declarative validity rule calls invalid (Alg. 2)."""

    kind: Literal["validity"] = "validity"
    rule: Rule


class ClassifierSet(_Strict):
    """Omega = {x : f(x) < tau} for a soft classifier f built from a registry classifier (Alg. 3)."""

    kind: Literal["classifier"] = "classifier"
    classifier: ClassifierName
    score: Score
    tau: _Probability = Field(0.5, gt=0.0, lt=1.0)


class Marked(_Strict):
    """Samples a person marked: the generator's batch for ``seed`` of size ``n``, and the
    positions in it that show what must go."""

    seed: int = Field(ge=0)
    n: int = Field(ge=1, le=4096)
    indices: list[int] = Field(min_length=1)

    @field_validator("indices")
    @classmethod
    def _in_batch(cls, indices: list[int], info) -> list[int]:
        n = info.data.get("n")
        seen: set[int] = set()
        for pos, i in enumerate(indices):
            if i in seen:
                raise PydanticCustomError(
                    "duplicate_index", "index {i} appears more than once", {"i": i}
                )
            seen.add(i)
            if i < 0 or (n is not None and i >= n):
                raise PydanticCustomError(
                    "index_out_of_range",
                    "index {i} (position {pos}) is outside [0, n) with n = {n}",
                    {"i": i, "pos": pos, "n": n},
                )
        return indices


class FeedbackSet(_Strict):
    """Generated samples marked by a person: for ``feedback`` (Moon et al.) and
    ``adapt-then-unlearn`` (Tiwary et al.); the marks also judge new samples (nearest neighbour)."""

    kind: Literal["feedback"] = "feedback"
    marked: Marked


ForgetSet = Annotated[
    Union[DataSet, ValiditySet, ClassifierSet, FeedbackSet], Field(discriminator="kind")
]


class Gates(_Strict):
    """What a candidate must pass before promotion."""

    max_invalidity: _Probability | None = Field(
        None, ge=0.0, le=1.0,
        description="by the spec's own checks; default: the method's (kong-*: 0.001, adapt-then-unlearn and "
                    "param-extrapolation: 0.01, feedback: 0.05; unlearning.jobs.gates.DEFAULT_MAX_INVALIDITY), and at "
                    "least 3x what a nearest-neighbour judge (data and marks specs) says of the kept images")
    max_judge_invalidity: _Probability | None = Field(
        None, ge=0.0, le=1.0,
        description="the same label-based checks asked of the domain's judge; default: max(0.01, max_invalidity)",
    )
    max_fid_increase: float | None = Field(
        None, ge=0.0, allow_inf_nan=False,
        description="FID may rise at most this much over the filtered parent (in the extractor's units; off by default)")
    max_fid_ratio: float | None = Field(
        None, ge=1.0, allow_inf_nan=False,
        description="FID may be at most this multiple of the filtered parent's (scale-free, so it means the same "
                    "on every domain and extractor); default: the method's (2; feedback: 3; "
                    "unlearning.jobs.gates.DEFAULT_MAX_FID_RATIO)")
    eval_samples: int = Field(50_000, ge=100, le=1_000_000)
    max_attack_invalidity: _Probability | None = Field(None, ge=0.0, le=1.0)
    attack_starts: int = Field(256, ge=0, le=100_000,
                               description="random latents the worst-case attack climbs from (0: no attack)")
    inversion_targets: int = Field(32, ge=0, le=10_000,
                                   description="real examples of what was forgotten the inversion attack tries to "
                                               "reproduce (0: no inversion)")
    min_class_share_ratio: _Probability = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="no retained class may drop below this fraction of its share among the parent's "
                    "samples outside Omega",
    )
    # image-to-image models (Li et al.): quality on the retain and forget inputs, separately
    max_retain_fid_ratio: float = Field(
        1.2, ge=1.0, allow_inf_nan=False,
        description="image-to-image: retain-set output FID may rise at most this many times",
    )
    min_forget_fid_ratio: float = Field(
        3.0, ge=1.0, allow_inf_nan=False,
        description="image-to-image: forget-set output FID must rise at least this many times",
    )


def _slug(name: str) -> str:
    if not (1 <= len(name) <= 64) or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        raise PydanticCustomError(
            "slug",
            "{name} is not a slug (1..64 letters, digits, '-' or '_')",
            {"name": shown(name)},
        )
    return name


class ForgetSpec(_Strict):
    name: Annotated[str, AfterValidator(_slug)]
    sets: list[ForgetSet] = Field(min_length=1)
    method: Method = "auto"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    gates: Gates = Field(default_factory=Gates)


# --------------------------------------------------------------------------------------
# Loading and error messages
# --------------------------------------------------------------------------------------

_TAG_MODELS: dict[str, type[BaseModel]] = {
    "data": DataSet,
    "validity": ValiditySet,
    "classifier": ClassifierSet,
    "feedback": FeedbackSet,
    "classifier_label": ClassifierLabelRule,
    "classifier_score": ClassifierScoreRule,
    "boundary": BoundaryRule,
    "any_of": AnyOfRule,
    "all_of": AllOfRule,
    "plugin": PluginRule,
    "one_minus_prob": OneMinusProb,
    "one_minus_entropy": OneMinusEntropy,
}
_UNION_FIELDS = {"rule", "score"}  # fields holding one tagged-union value
_UNION_LISTS = {"sets", "rules"}  # list fields whose items are tagged unions
_NESTED_MODELS = {"gates": Gates, "marked": Marked}


def _walk_loc(loc: tuple[Any, ...]) -> tuple[list[Any], type[BaseModel]]:
    """Drop pydantic's union tags from an error location, and find the model it ends in."""
    kept: list[Any] = []
    model: type[BaseModel] = ForgetSpec
    expect_tag = False
    for el in loc:
        if expect_tag and isinstance(el, str) and el in _TAG_MODELS:
            model = _TAG_MODELS[el]
            expect_tag = False
            continue
        expect_tag = False
        prev = kept[-1] if kept else None
        kept.append(el)
        if isinstance(el, str):
            if el in _UNION_FIELDS:
                expect_tag = True
            elif el in _NESTED_MODELS and el in model.model_fields:
                model = _NESTED_MODELS[el]
        elif isinstance(el, int) and prev in _UNION_LISTS:
            expect_tag = True
    return kept, model


def _path(parts: list[Any]) -> str:
    out = ""
    for el in parts:
        if isinstance(el, int):
            out += f"[{el}]"
        else:
            out += ("." if out else "") + str(el)
    return out


def _expected(text: str) -> str:
    """"'a', 'b' or 'c'" -> "a, b, c"."""
    return text.replace(" or ", ", ").replace("'", "")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# error types whose message already names the offending value
_OWN_MESSAGES = {
    "value_error",
    "assertion_error",
    "unknown_rule_type",
    "file_name",
    "classifier_name",
    "slug",
    "duplicate_index",
    "index_out_of_range",
    "label",
}


def _describe(err: dict[str, Any]) -> tuple[str, str]:
    parts, model = _walk_loc(tuple(err.get("loc", ())))
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    discriminator = "kind" if len(parts) >= 2 and parts[-2] == "sets" else "type"

    if kind == "missing":
        return _path(parts), "field required"
    if kind == "extra_forbidden":
        key = str(parts[-1]) if parts else "?"
        allowed = list(model.model_fields)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return _path(parts), f"unknown field{hint}; allowed: {', '.join(allowed)}"
    if kind == "literal_error":
        return _path(parts), f"{_show(value)} is not one of {_expected(str(ctx.get('expected', '')))}"
    if kind == "union_tag_invalid":
        return (
            _path(parts + [discriminator]),
            f"{_show(ctx.get('tag'))} is not one of {_expected(str(ctx.get('expected_tags', '')))}",
        )
    if kind == "union_tag_not_found" or (kind in ("model_attributes_type", "dict_type", "model_type")):
        if isinstance(value, dict):
            return _path(parts + [discriminator]), "field required"
        return _path(parts), f"should be a mapping, got {_show(value)}"
    if kind in ("too_short", "too_long"):
        what = str(ctx.get("field_type", "value")).lower()
        n = ctx.get("min_length" if kind == "too_short" else "max_length")
        bound = "at least" if kind == "too_short" else "at most"
        return _path(parts), f"{what} should have {bound} {n} item{'' if n == 1 else 's'}"
    msg = str(err.get("msg", kind))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    msg = msg.replace("Input should", "should")
    msg = msg[:1].lower() + msg[1:]
    if kind not in _OWN_MESSAGES and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        msg += f" (got {_show(value)})"
    return _path(parts), msg


def _validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        problem = _describe(err)
        if problem not in out:
            out.append(problem)
    return out


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else str(problem)
    if mark is not None:
        text += f" at line {mark.line + 1}, column {mark.column + 1}"
    return text


class _UniqueKeyLoader(BoundedComposer, yaml.SafeLoader):
    """``yaml.SafeLoader`` (no arbitrary objects) that refuses duplicate keys, so that a
    repeated key is a typo caught rather than a value silently replaced, and refuses
    documents whose aliases or nesting break the bounds (``bounds.py``) before building them."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key; let the base constructor report it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _json_unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_text(text: str, fmt: str | None = None) -> Any:
    """JSON or YAML text -> Python data. ``fmt`` is 'json', 'yaml' or None (guess)."""
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        raise SpecError("spec is empty")
    check_text(stripped)
    looks_json = fmt == "json" or (fmt is None and stripped[:1] in "{[")
    json_error: str | None = None
    if looks_json:
        try:
            return json.loads(stripped, object_pairs_hook=_json_unique)
        except RecursionError:
            raise SpecError(f"spec nests mappings and lists more than {MAX_DEPTH} deep; flatten it") from None
        except json.JSONDecodeError as exc:
            json_error = str(exc)
        except ValueError as exc:  # duplicate key
            raise SpecError(f"spec is not valid JSON or YAML: {exc}") from exc
        if fmt == "json":
            raise SpecError(f"spec is not valid JSON or YAML: {json_error}")
    try:
        return yaml.load(stripped, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        message = json_error if json_error is not None else _yaml_message(exc)
        raise SpecError(f"spec is not valid JSON or YAML: {message}") from exc


def _read_path(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise SpecError(f"spec file {str(path)!r} does not exist") from exc
    except OSError as exc:
        raise SpecError(f"spec file {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    fmt = "json" if suffix == ".json" else "yaml" if suffix in (".yaml", ".yml") else None
    return _parse_text(_decode(raw), fmt)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc


_SPEC_SUFFIXES = (".json", ".yaml", ".yml")


def _looks_like_path(text: str) -> bool:
    if "\n" in text or len(text) > 4096 or text.lstrip()[:1] in "{[":
        return False
    if text.lower().endswith(_SPEC_SUFFIXES):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def load_spec(source: str | Path | bytes | dict | ForgetSpec) -> ForgetSpec:
    """Parse and validate a forget specification.

    ``source`` is a ``Path`` or a path string (``.json``, ``.yaml``, ``.yml``; other
    suffixes are tried as JSON, then YAML), raw JSON or YAML text, bytes (UTF-8), a dict,
    or an already-built :class:`ForgetSpec` (returned as is). YAML is read with a
    ``yaml.SafeLoader`` (no Python objects), which also refuses duplicate keys.

    Raises :class:`SpecError` (:class:`SpecValidationError` for schema problems) whose
    message has one ``path: reason`` line per problem.
    """
    if isinstance(source, ForgetSpec):
        return source
    if isinstance(source, Path):
        data = _read_path(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = _parse_text(_decode(bytes(source)))
    elif isinstance(source, str):
        data = _read_path(Path(source)) if _looks_like_path(source) else _parse_text(source)
    elif isinstance(source, dict):
        data = source
    else:
        raise SpecError(
            f"spec must be a path, JSON/YAML text, bytes or a mapping, not {type(source).__name__}"
        )
    if data is None:
        raise SpecError("spec is empty")
    check_data(data)  # parsed, not yet validated: bounded depth and size
    if not isinstance(data, dict):
        raise SpecError(
            f"spec must be a mapping (a JSON object or YAML mapping) at the top level, got {_kind_name(data)}"
        )
    try:
        return ForgetSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecValidationError(_validation_problems(exc)) from None


def _kind_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------
# Derived facts
# --------------------------------------------------------------------------------------


def canonical_json(spec: ForgetSpec) -> str:
    """The spec as canonical JSON: defaults filled in, keys sorted, no spaces."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(spec: ForgetSpec) -> str:
    """sha256 (hex) of the canonical JSON: equal for specs that mean the same thing, however
    they were written (key order, JSON vs YAML, defaults spelt out or not)."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


def walk_rules(rule: Rule):
    """Yield ``rule`` and every rule nested in it (depth first)."""
    yield rule
    if isinstance(rule, (AnyOfRule, AllOfRule)):
        for sub in rule.rules:
            yield from walk_rules(sub)


def referenced_classifiers(spec: ForgetSpec) -> set[str]:
    """Names of the registry classifiers the spec needs (plugins' params are opaque)."""
    names: set[str] = set()
    for s in spec.sets:
        if isinstance(s, ClassifierSet):
            names.add(s.classifier)
        elif isinstance(s, ValiditySet):
            for rule in walk_rules(s.rule):
                if isinstance(rule, (ClassifierLabelRule, ClassifierScoreRule)):
                    names.add(rule.classifier)
    return names


def referenced_files(spec: ForgetSpec) -> list[str]:
    """Uploaded file names the data sets need, in order of first mention, without repeats."""
    out: list[str] = []
    for s in spec.sets:
        if isinstance(s, DataSet):
            out.extend(f for f in s.files if f not in out)
    return out


def retain_files(spec: ForgetSpec) -> list[str]:
    """Uploaded retain images named by ``hyperparameters.retain_files`` (image-to-image
    unlearning); every name must be a plain file name."""
    names = spec.hyperparameters.get("retain_files") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecValidationError([("hyperparameters.retain_files", "must be a list of uploaded file names")])
    for name in names:
        try:
            _plain_file_name(name)
        except PydanticCustomError as exc:
            raise SpecValidationError([("hyperparameters.retain_files", str(exc))]) from None
    return list(dict.fromkeys(names))
