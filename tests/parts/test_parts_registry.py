"""Every registered part and method follows the rules a newcomer's new part must follow (`parts.py`)."""

import copy
import inspect

import pytest

from structprune import compose, prune
from structprune.allocate import ALLOCATIONS
from structprune.compensate import COMPENSATIONS
from structprune.composition import COMPOSITION_FIELDS, PASS_OPTION_HELP
from structprune.methods import METHODS
from structprune.parts import EVIDENCE, SIGNATURES
from structprune.scores import SCORES, TAYLOR_IMPORTANCES

REGISTRIES = {"score": SCORES, "allocation": ALLOCATIONS, "compensation": COMPENSATIONS}
PARTS = [(kind, part) for kind, registry in REGISTRIES.items() for part in registry.values()]


def _option_values(part) -> list[dict]:
    """Options under which a part's evidence can differ (Taylor's importance), else its defaults."""
    if part.name == "taylor":
        return [{"importance": i} for i in TAYLOR_IMPORTANCES]
    return [{}]


@pytest.mark.parametrize(("kind", "part"), PARTS, ids=lambda p: p if isinstance(p, str) else p.name)
def test_a_part_has_its_kinds_signature_and_explains_every_option(kind, part):
    names = list(inspect.signature(part.fn).parameters)
    assert tuple(names[:3]) == SIGNATURES[kind], f"{part.name}: {names[:3]} is not the {kind} signature"
    assert set(part.option_help) == set(part.defaults), f"{part.name}: help for {set(part.option_help)}, " \
                                                        f"options {set(part.defaults)}"
    assert all(text.strip() for text in part.option_help.values()) and part.summary.strip()
    for options in _option_values(part):
        assert part.needs_for(options) <= EVIDENCE, f"{part.name} needs {part.needs_for(options) - EVIDENCE}"
    assert registry_key(kind, part) == part.name


def registry_key(kind, part):
    return next(name for name, p in REGISTRIES[kind].items() if p is part)


@pytest.mark.parametrize("name", list(SCORES))
def test_scores_that_say_they_give_column_scores_give_them(name, tiny, calibration):
    """A score that gives o_proj column scores prunes query heads inside KV groups (which regroup them); one
    that does not is refused for them before any work."""
    model = copy.deepcopy(tiny)
    if SCORES[name].gives_columns:
        result = prune(model, compose(score=name, attention_unit="query_head"), 0.3, calibration=calibration)
        assert result.plan.kept_heads is not None
    else:
        with pytest.raises(ValueError, match="column scores"):
            compose(score=name, attention_unit="query_head")


@pytest.mark.parametrize("method", list(METHODS.values()), ids=lambda m: m.name)
def test_every_method_option_is_explained_once(method):
    assert set(method.option_help) <= set(method.defaults), f"{method.name}: help for options it does not have"
    missing = [option for option in method.defaults if not method.help_for(option)]
    assert not missing, f"{method.name}: no help for {missing}"
    parts = method.composition(**method.defaults)
    shared = {**PASS_OPTION_HELP, **{k: v for registry_part in (SCORES[parts.score], ALLOCATIONS[parts.allocation],
                                                                 COMPENSATIONS[parts.compensation])
                                     for k, v in registry_part.option_help.items()}}
    repeated = [k for k, text in method.option_help.items() if shared.get(k) == text]
    assert not repeated, f"{method.name} repeats the shared help of {repeated}: delete it from its option_help"


def test_pass_options_are_explained():
    assert set(PASS_OPTION_HELP) == set(COMPOSITION_FIELDS)
