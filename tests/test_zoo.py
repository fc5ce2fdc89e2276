"""Every torchvision classification model: traced, grouped, every layer accounted for, pruned.

Models are built with ``weights=None`` in train mode (so auxiliary heads are traced too) at
reduced input sizes where the architecture allows. On each model: the no-influence
invariant (the grouping found every consumer of every prunable channel), sparsity 0 gives
the original bit for bit, and sparsity 0.5 gives a smaller model whose outputs equal the
masked model's (checked inside ``apply_masks``), leaving whole only the groups
``zoo_pins.PINS`` lists, for the reasons it gives, and cutting at least its share of MACs.
The largest models run these only in the slow run (`pytest -m slow`).
"""
import pytest
import torch
import torchvision

from helpers import check_pruning
from pruneconf import Pruner, find_groups, trace
from pruneconf.groups.context import FOLLOWER, SOURCE
from pruneconf.recipe import build_recipe
from pruneconf.recipe.yamlio import dump_document, round_trip_yaml

MODELS = torchvision.models.list_models(module=torchvision.models)
SIZES = {"inception_v3": 299, "vit_b_16": 224, "vit_b_32": 224, "vit_h_14": 224, "vit_l_16": 224,
         "vit_l_32": 224, "maxvit_t": 224}
LARGE = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf",
         "convnext_large", "efficientnet_b7", "efficientnet_v2_l", "wide_resnet101_2"}
WEIGHTED = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear")


def example(name):
    size = SIZES.get(name, 64)
    return torch.randn(2, 3, size, size)


def weighted_layers(graph):
    """(layer, weight parameter) of every conv and linear op that ran."""
    out = {}
    for node, attrs in graph.nodes(data=True):
        if attrs["kind"] == "call" and attrs["op"] in WEIGHTED:
            weight = attrs["args"][1]
            param = graph.nodes[weight.node]["target"]
            out[graph.graph["layers"][param]] = param
    return out


def test_the_zoo_is_complete():
    assert len(MODELS) == 80


@pytest.mark.parametrize("name", MODELS)
def test_every_layer_is_grouped_or_reported(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    x = example(name)
    graph = trace(model, x)
    groups = find_groups(graph)
    assert groups.prunable, f"{name}: nothing prunable"
    for layer, param in weighted_layers(graph).items():
        owners = [g for g in groups for m in g.members if m.param == param and m.role in (SOURCE, FOLLOWER)]
        sources = [g for g in groups for m in g.members if m.param == param and m.role == SOURCE]
        assert owners, f"{name}: {layer} belongs to no group"
        assert len(sources) <= 1, f"{name}: {layer} is the source of {len(sources)} groups"
        for g in owners:
            assert g.prunable or g.reasons, f"{name}: group {g.center} is neither prunable nor explained"
    doc = round_trip_yaml().load(dump_document(build_recipe(groups, model=f"torchvision.models:{name}",
                                                            input_shapes=[list(x.shape)])))
    assert list(doc["groups"]) == [g.center for g in groups.prunable]
    if name not in LARGE:
        check_pruning(model, x, f"torchvision:{name}", groups)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LARGE))
def test_pruning_large_models(name):
    model = torchvision.models.get_model(name, weights=None)
    x = example(name)
    check_pruning(model, x, f"torchvision:{name}")


def test_a_model_that_loses_a_pruned_group_fails_its_pin(monkeypatch):
    """As if a change left one of resnet18's groups whole: its MACs still fall, but the pin
    of the groups left whole fails."""
    skipped = Pruner.skipped
    monkeypatch.setattr(Pruner, "skipped", lambda self: {**skipped(self), "layer1.0.conv1": "cannot resize (simulated)"})
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="groups left whole changed"):
        check_pruning(torchvision.models.resnet18(), example("resnet18"), "torchvision:resnet18")
