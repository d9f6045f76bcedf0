"""W&B's schema (the `sweeps` package) decides on the W&B part of a sweep file, each
complaint one line on the key the user wrote (`parameters.epochs.min`), not jsonschema's
paragraph over every law. This runner's keys are set apart first, and what it extends: a
`metric` list (a trade-off) and methods W&B lacks (tpe, cmaes, qmc, gp, and the tpe default
of a file in this runner's form), asked about as `random`. W&B's deprecated exponent laws
run as written, with W&B's note."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from experiments.core import config as cfg
from experiments.search.spec.engine import part
from experiments.search.spec.reader import Reader
from experiments.search.spec.settings import MAX_RECORDED_ITEMS, _items

RUNNER_METHODS = ("tpe", "cmaes", "qmc", "gp")
Violation = tuple[str, str]  # (key path, reason)
W = "W&B's schema: "
_TYPES = {"object": "a mapping", "array": "a list", "string": "text", "number": "a number",
          "integer": "a whole number", "boolean": "true or false"}
# W&B's checks beside its schema, told by their message: the key they are on.
_OTHERS = (("`metric` and `metrics`", "metrics"), ("`metrics` requires", "metrics"),
           ("`controller:", "controller"), ("`early_terminate` cannot", "early_terminate"),
           ("`parameters` is required", "parameters"), ("scheduler.engine", "scheduler"))
# W&B's deprecated laws (min and max are exponents) and the law it says to use instead.
_DEPRECATED = {"param_loguniform": "param_loguniform_v2",
               "param_inv_loguniform": "param_inv_loguniform_v2",
               "param_qloguniform": "param_qloguniform_v2"}


@functools.cache
def _sweeps() -> SimpleNamespace:
    """W&B's schema, imported on first use (engine.py); not `sweeps.params`, whose SciPy
    import is a second of every validation."""
    from jsonschema import Draft7Validator

    wandb_cfg, schema = part("sweeps.config.cfg"), part("sweeps.config.schema")
    defs = schema.dereferenced_sweep_config_jsonschema["definitions"]
    return SimpleNamespace(
        verdict=wandb_cfg.schema_violations_from_proposed_config, validator=schema.validator,
        rules=(schema.validate_min_max, schema.validate_categorical_prob), defs=defs,
        refs=schema.sweep_config_jsonschema["definitions"],
        law=Draft7Validator(defs["parameter"], format_checker=schema.format_checker),
        one=lambda law: Draft7Validator(defs[law], format_checker=schema.format_checker))


def wandb_part(raw: dict, runner_keys: tuple[str, ...]) -> dict:
    """The file as W&B's schema is asked about it: this runner's keys and extensions out."""
    config = {k: v for k, v in raw.items() if k not in runner_keys}
    if isinstance(config.get("metric"), list):  # a trade-off: W&B has one metric
        del config["metric"]
    method = config.get("method")
    if isinstance(method, str) and method in RUNNER_METHODS:
        config["method"] = "random"
    elif "method" not in config and any(k in raw for k in runner_keys):
        config["method"] = "random"  # this runner's form defaults to tpe; W&B's has none
    return config


def check(raw: dict, runner_keys: tuple[str, ...]) -> tuple[list[Violation], list[str]]:
    """(violations, deprecation notes) of W&B's schema on the file's W&B part."""
    config = wandb_part(raw, runner_keys)  # jsonschema quotes values whole: no alias bomb
    big = [k for k, v in config.items() if _items(v) > MAX_RECORDED_ITEMS]
    if big:
        return [(k, f"too large for W&B's schema check (over {MAX_RECORDED_ITEMS:,} items)")
                for k in big], []
    notes = list(_deprecated("parameters", config.get("parameters")))
    verdict = violations(config)
    if not verdict:
        return [], notes
    found = _dedupe(_explain(config, verdict))
    # A complaint this module cannot place is still told: W&B's verdict decides.
    return found or [("(top level)", W + _short(m)) for m in verdict], notes


def tell(r: Reader, raw: dict, runner_keys: tuple[str, ...], notes: list[str]) -> None:
    """W&B's violations as mistakes (a key the runner told keeps its line); notes too."""
    found, deprecated = check(raw, runner_keys)
    notes += deprecated
    told = [line.removeprefix(f"{r.path}: ").split(": ", 1)[0] for line in r.found]
    for key, reason in found:
        if not any(_related(key, t) for t in told):
            with r.each():
                raise r.fail(key, reason)


def law(where: str, spec: Any) -> list[Violation]:
    """W&B's complaints about one parameter's law, one a key ([] when W&B takes it)."""
    return [] if _sweeps().law.is_valid(spec) else _dedupe(_param(where, spec))


def violations(config: dict) -> list[str]:
    """W&B's `schema_violations_from_proposed_config` without deprecations: the function on
    all but `parameters`, and on those what its loop checks, by W&B's code, without SciPy."""
    s = _sweeps()
    head = {k: v for k, v in config.items() if k != "parameters"}
    try:
        messages = s.verdict(head)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        messages = [str(exc)]  # W&B raises on some malformed files rather than list them
    if "parameters" not in config:
        return messages
    messages = [m for m in messages if not m.startswith("`parameters` is required")]
    messages += [e.message for e in s.validator.iter_errors(config)
                 if list(e.absolute_path)[:1] == ["parameters"]]
    params = config["parameters"]
    for name, spec in params.items() if isinstance(params, dict) else ():
        if not isinstance(spec, dict):  # W&B raises here
            messages.append(f"Invalid configuration for hyperparameter '{name}'")
            continue
        for rule in s.rules:
            try:
                rule(name, spec)
            except (ValueError, TypeError) as exc:
                messages.append(str(exc.args[0]) if exc.args else repr(exc))
    return messages


def deprecation_note(law: str) -> str:
    """W&B's words (its params.make_param_log_deprecation_message) for a deprecated law."""
    old, new = (_laws()[k] for k in (law, _DEPRECATED[law]))
    return (f"uses {old}, where min/max specify base-e exponents. Use {new} to specify "
            "limit values.")


def _deprecated(where: str, params: Any) -> Iterable[str]:
    """W&B's note for each law it deprecates, nested parameters too."""
    for name, spec in params.items() if isinstance(params, dict) else ():
        if isinstance(spec, dict) and "parameters" in spec:
            yield from _deprecated(f"{where}.{name}.parameters", spec["parameters"])
        elif isinstance(spec, dict) and _schema_name(spec) in _DEPRECATED:
            yield cfg.one_line(f"{where}.{name}: {name} {deprecation_note(_schema_name(spec))}"
                               " (W&B's deprecation note; run as written)")


def _explain(config: dict, verdict: list[str]) -> list[Violation]:
    s = _sweeps()
    errors = list(s.validator.iter_errors(config))
    out = [v for e in errors if list(e.absolute_path)[:1] != ["parameters"]
           for v in _error("", e)]
    if "parameters" in config:
        out += _parameters("parameters", config["parameters"])
    said = {e.message for e in errors}
    names = config["parameters"] if isinstance(config.get("parameters"), dict) else {}
    return out + [_other(m, names) for m in verdict if m not in said and not m.startswith(
        ("invalid hyperparameter", "Invalid configuration"))]  # those are placed above


def _other(message: str, names: dict) -> Violation:
    """A W&B check beside its schema, on the key it is about."""
    for name in names:
        if message.startswith(f"{name}: min "):
            return f"parameters.{name}.min", W + _short(message.split(": ", 1)[1])
        if message.startswith(f"Parameter {name}: "):
            return f"parameters.{name}.probabilities", W + _short(message.split(": ", 1)[1])
    key = next((k for part, k in _OTHERS if part in message), "(top level)")
    return key, W + _short(message)


def _parameters(where: str, params: Any) -> list[Violation]:
    """W&B's `parameters` mapping: at least one, names it allows, each a law it knows."""
    s = _sweeps()
    if not isinstance(params, dict):
        return [(where, f"{W}expected a mapping of parameters, got {cfg.show(params)}")]
    if not params:
        return [(where, f"{W}empty; give at least one parameter")]
    pattern = s.defs["parameters"]["propertyNames"]["pattern"]
    out = []
    for name, spec in params.items():
        if isinstance(name, str) and not re.search(pattern, name):
            out.append((f"{where}.{name}", f"{W}a parameter's name starts with a letter or _ "
                                           "and holds only letters, digits, _, . and -"))
        elif not s.law.is_valid(spec):
            out += _param(f"{where}.{name}", spec)
    return out


def _param(where: str, spec: Any) -> list[Violation]:
    """Why W&B takes this mapping for no law: checked against the law it names (or the one
    its keys imply), not against all nineteen at once."""
    if not isinstance(spec, dict):
        return [(where, f"{W}expected a mapping (a law), got {cfg.show(spec)}")]
    if "parameters" in spec:
        return [(f"{where}.{k}", f"{W}nested parameters take `parameters` and nothing else")
                for k in spec if k != "parameters"] + _parameters(f"{where}.parameters",
                                                                   spec["parameters"])
    law = _schema_name(spec)
    if law is None:
        return [(f"{where}.distribution", f"{W}got {cfg.show(spec['distribution'])}; W&B's "
                 f"laws: {', '.join(_laws().values())}")] if "distribution" in spec else [
            (where, f"{W}give values, value, min and max, or a distribution")]
    if law == "param_categorical" and "probabilities" in spec:
        return [(f"{where}.probabilities", f"{W}categorical takes no probabilities; weighted "
                 "values have no distribution, or categorical_w_probabilities")]
    name = _laws()[law]
    out = [v for e in _sweeps().one(law).iter_errors(spec) for v in _error(where, e, name)]
    return out or [(where, f"{W}{cfg.show(spec)} is not a {name} law W&B accepts")]


@functools.cache
def _laws() -> dict[str, str]:
    """{schema name: distribution} for every law of W&B's `parameter` (uniform's variants
    agree; param_dict has none)."""
    defs = _sweeps().defs
    first = {n: defs[n].get("anyOf", [defs[n]])[0].get("properties", {}) for n in defs}
    return {n: first[n]["distribution"]["enum"][0] for n in first if "distribution" in first[n]
            and n.startswith("param_")}


def _schema_name(spec: dict) -> str | None:
    """The law a parameter means: its `distribution`'s, else W&B's default for its keys."""
    if "distribution" in spec:
        return next((k for k, d in _laws().items() if d == spec["distribution"]), None)
    if "values" in spec:
        return f"param_categorical{'_w_probabilities' if 'probabilities' in spec else ''}"
    if "value" in spec:
        return "param_single_value"
    if "min" in spec and "max" in spec:
        whole = all(type(spec[b]) is int for b in ("min", "max"))
        return "param_int_uniform" if whole else "param_uniform"
    return None


def _error(where: str, error: Any, law: str = "") -> list[Violation]:
    """One jsonschema error as (key path, one readable line); `law` names the parameter's."""
    at = _key(where, error.absolute_path)
    kind, value, instance = error.validator, error.validator_value, error.instance
    if kind in ("anyOf", "oneOf") and error.context:
        branches = error.schema.get(kind, [])
        if branches and all(set(b) == {"required"} for b in branches):
            return [(at, f"{W}give {' or '.join(' with '.join(b['required']) for b in branches)}")]
        if len(branches) == 1:  # early_terminate: one law, each of its errors told
            return [v for e in error.context for v in _error(where, e, law)]
        from jsonschema.exceptions import best_match

        # uniform without `distribution` is one of its variants that do not require it
        context = [e for e in error.context if not (e.validator == "required" and (
            "distribution" in e.validator_value and "distribution" not in e.instance))]
        return _error(where, best_match(context or error.context), law)
    if kind == "additionalProperties":
        allowed = [k for k in error.schema.get("properties", {}) if k != "distribution"]
        return [(_key(at, [k]), f"{W}{law or 'this mapping'} does not take {k}; "
                                f"{'it takes' if law else 'allowed:'} {', '.join(allowed)}")
                for k in instance if k not in error.schema.get("properties", {})]
    if kind == "required":
        missing = [k for k in value if k not in instance]
        if at == "(top level)" and missing == ["method"]:
            return [("method", f"{W}missing; W&B requires it: bayes, random or grid (or "
                               f"this runner's {', '.join(RUNNER_METHODS)})")]
        return [(_key(at, [k]), f"{W}missing; {law or 'it'} needs {', '.join(value)}")
                for k in missing]
    if law == "int_uniform" and kind in ("format", "type") and value == "integer":
        return [(at, f"{W}int_uniform takes whole min and max written as integers, got "
                     f"{cfg.show(instance)}")]
    got = f", got {cfg.show(instance)}"
    reason = {**dict.fromkeys(("type", "format"), lambda: f"expected {_TYPES.get(value, value)}"
                                                          f"{got}"),
              "enum": lambda: f"got {cfg.show(instance)}; allowed: {', '.join(map(str, value))}",
              "minimum": lambda: f"expected a number >= {value}{got}",
              "exclusiveMinimum": lambda: f"expected a number > {value}{got}",
              "minItems": lambda: f"expected at least {value} item(s){got}",
              "minProperties": lambda: "empty; give at least one"}.get(
        kind, lambda: _short(error.message))()
    return [(at, W + (f"{law}: " if law else "") + reason)]


def _key(where: str, path: Iterable[Any]) -> str:
    """parameters.lr.min, metric[0].goal: a key path as the user names it."""
    out = "" if where == "(top level)" else where
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f"{'.' if out else ''}{step}"
    return out or "(top level)"


def _short(message: str, limit: int = 200) -> str:
    """W&B's own message on one line, cut short (jsonschema quotes whole values)."""
    text = cfg.one_line(" ".join(message.split()))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _related(a: str, b: str) -> bool:
    """Whether two key paths are one key or one holds the other."""
    return a == b or a.startswith((f"{b}.", f"{b}[")) or b.startswith((f"{a}.", f"{a}["))


def _dedupe(found: list[Violation]) -> list[Violation]:
    """One line a key: the first said about it, or about a key that holds it."""
    out: list[Violation] = []
    for key, reason in found:
        if not any(_related(key, k) for k, _ in out):
            out.append((key, reason))
    return out
