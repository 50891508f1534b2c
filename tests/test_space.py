from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from autocomp import AutocompError
from autocomp.space import SearchSpace, load_space


def test_sample_builds_the_recipe_of_the_chosen_values():
    space = SearchSpace(heads_keep=(0.5, 1.0), mlp_keep=(0.5, 1.0), rank=(0.25, 1.0), tokens_keep=(0.7, 1.0),
                        weight_bits=(32, 8))
    trial = optuna.trial.FixedTrial(space.params({
        "b0.heads_keep": 0.5, "b0.mlp_keep": 1.0, "b0.rank": 0.25, "b0.tokens_keep": 0.7, "b0.weight_bits": 8,
        "b1.heads_keep": 1.0, "b1.mlp_keep": 0.5, "b1.rank": 1.0, "b1.tokens_keep": 1.0, "b1.weight_bits": 32}))
    recipe = space.sample(trial, [6, 6])
    assert recipe.summary() == "h3:r0.25:tm0.7:w8-sq | m0.5"


def test_tokens_are_never_reduced_after_the_last_block():
    """Tokens merged after the last block reach only the head: nothing saved (1.25x the latency, logits unchanged, in
    a user's run), and the recipe claimed a merge that did nothing."""
    space = SearchSpace(tokens_keep=(0.7, 1.0))
    recipe = space.sample(optuna.trial.FixedTrial(space.params({"b0.tokens_keep": 0.7, "b1.tokens_keep": 0.7})),
                          [4, 4])
    assert "reduce_tokens" in recipe.blocks[0] and recipe.blocks[1] == {}
    uniform = dataclasses.replace(space, uniform=True)
    recipe = uniform.sample(optuna.trial.FixedTrial(uniform.params({"all.tokens_keep": 0.7})), [4, 4, 4])
    assert ["reduce_tokens" in block for block in recipe.blocks] == [True, True, False]


def test_single_choice_knobs_are_not_searched():
    space = SearchSpace(heads_keep=(0.5, 1.0))
    study = optuna.create_study()
    trial = study.ask()
    space.sample(trial, [4, 4, 4])
    assert sorted(trial.params) == ["b0.heads_keep#rank", "b1.heads_keep#rank", "b2.heads_keep#rank"]


@pytest.mark.parametrize("text, message", [
    ("heads_keep: [0, 1.0]\n", "heads_keep must list fractions in (0, 1], got [0, 1.0]"),
    ("weight_bits: [32, 5]\n", "weight_bits must list values from [32, "),
    ("token_method: blend\n", "token_method: method must be one of ['merge', 'prune'], got 'blend'"),
    ("distill_alpha: [2.0]\n", "distill_alpha must be the weight of the distillation term, a number in [0, 1], "
                                "got 2.0"),
    ("smooth: 2\n", ": smooth must be null (off) or a migration strength"),
    ("tokens: [0.5]\n", "unknown key(s) ['tokens']"),
    ("quantize_layers: ['']\n", "quantize_layers choices are 'all' or layer names joined by commas, got ''"),
    ("quantize_layers: 8\n", "quantize_layers must be a list of strings, got 8"),
    ("heads_keep: half\n", "heads_keep must be a list of numbers, got 'half'"),  # not its letters
    # per-block choices: its keys were read as the choices ("got [0, 1]")
    ("heads_keep: {0: [1.0], 1: [0.5, 1.0]}\n", "heads_keep must be one list of choices for every block, got a "
                                                 "mapping {0: [1.0], 1: [0.5, 1.0]}: give some blocks choices of "
                                                 "their own under blocks:, e.g. blocks: {0: {heads_keep: [...]}}"),
    ("weight_bits: [32, 8]\nblocks: {0: {weight_bits: [4]}}\n", "blocks: 0: weight_bits [4] offers 4, which the "
                                                                 "space's own weight_bits [32, 8] does not: a block's "
                                                                 "choices are some of the space's (add 4"),
    ("blocks: {first: {heads_keep: [1.0]}}\n", "blocks: 'first' is not a block: give a block index (0 the first, -1 "
                                               "the last) or an inclusive range as \"2..5\""),
    ("heads_keep: [0.5, 1.0]\nblocks: {0: {heads: [1.0]}}\n", "blocks: 0: 'heads' is not a per-block knob"),
    ("weight_bits: [32, 8]\nblocks: {0: {weight_bit: [32]}}\n", "blocks: 0: 'weight_bit' is not a per-block knob "
                                                                "(did you mean 'weight_bits'?)"),
    ("heads_keep: [0.5, 1.0]\nblocks: {0: {heads_keep: 1.0}}\n", "blocks: 0: heads_keep must list that block's "
                                                                  "choices, e.g. [0.5, 1.0], got 1.0"),
    ("heads_keep: [0.5, 1.0]\nuniform: true\nblocks: {0: {heads_keep: [1.0]}}\n", "but uniform: true draws one "
                                                                                   "choice for every block alike"),
    ("weight_bits: [32, 8]\nblocks: {-1: {weight_bits: [8]}}\n", "blocks: -1: weight_bits [8] leaves out the space's "
                                                                 "least compressing choice, 32: a block's own choices "
                                                                 "hold a block back from compression"),
    ("weight_bits: [32, 8]\nact_bits: [null, 8]\nblocks: {0: {act_bits: [8]}}\n", "blocks: 0: 'act_bits' is not a "
                                                                                  "per-block knob"),
    ("weight_bits: '8'\n", "weight_bits must be a list of whole numbers, got '8'"),
    ("weight_bits: [32, 8]\nact_bits: [4]\n", "act_bits must list null (dynamic: the int8 kernel quantizes each "
                                             "batch) and/or 8 (static: calibrated), each once, e.g. [null, 8], got "
                                             "[4]"),
    ("act_bits: null\n", "act_bits must list null (dynamic: the int8 kernel quantizes each batch) and/or 8 (static: "
                         "calibrated), each once, e.g. [null, 8], got None"),
    ("weight_bits: [32, 8]\nact_bits: [null, null]\n", "each once, e.g. [null, 8], got [None, None]"),
    ("weight_bits: [32, 4]\nact_bits: [null, 8]\n", "act_bits offers 8 (static activations), which only blocks "
                                                   "with 8-bit weights use, but weight_bits [32, 4] has no 8"),
    ("lowrank_layers: [qkv, attn]\n", "lowrank_layers must name each of ['qkv', 'proj', 'fc1', 'fc2'] at most "
                                       "once, got ['qkv', 'attn']"),
    ("lowrank_layers: []\n", "lowrank_layers must be a non-empty list of layer names"),
    ("", "is empty; the keys are ['heads_keep', "),
    ("- heads_keep: [0.5]\n", "is a list; write 'key: value' lines, not '- ' items"),
])
def test_bad_space_files_are_refused(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(AutocompError) as info:
        load_space(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_distillation_is_searched_and_applied(tiny_teacher, digits_splits):
    import torch

    from autocomp.search._objective import build_candidate

    space = SearchSpace(heads_keep=(0.5,), distill_steps=(0, 5), distill_alpha=(0.3, 0.9))
    trial = optuna.trial.FixedTrial(space.params({"distill_steps": 5, "distill_alpha": 0.9}))
    recipe = space.sample(trial, [4, 4])
    assert recipe.distill is not None and (recipe.distill.steps, recipe.distill.alpha) == (5, 0.9)
    assert recipe.summary().endswith("+ kd5a0.9T4")
    # the uncompressed model is one recipe whatever the draw's distillation, so the search knows it ran it already
    choices = SearchSpace(heads_keep=(1.0, 0.5), distill_steps=(0, 5), distill_alpha=(0.3, 0.9))
    uncompressed = [choices.sample(optuna.trial.FixedTrial(choices.params(
        {"b0.heads_keep": 1.0, "b1.heads_keep": 1.0, "distill_steps": 5, "distill_alpha": alpha})), [4, 4])
        for alpha in (0.3, 0.9)]
    assert uncompressed[0] == uncompressed[1] and uncompressed[0].distill is None
    from autocomp.search._local import recipe_key

    earlier = {**uncompressed[0].to_dict(), "distill": recipe.to_dict()["distill"]}  # as a study before recorded it
    assert recipe_key(earlier) == recipe_key(uncompressed[0].to_dict()) != recipe_key(recipe.to_dict())
    _, model = tiny_teacher
    plain = build_candidate(model, type(recipe)(blocks=recipe.blocks), digits_splits.calib.x, digits_splits.train)
    tuned = build_candidate(model, recipe, digits_splits.calib.x, digits_splits.train)
    assert not torch.equal(plain.blocks[0].attn.qkv.weight, tuned.blocks[0].attn.qkv.weight)
    again = build_candidate(model, recipe, digits_splits.calib.x, digits_splits.train)
    assert torch.equal(again.blocks[0].attn.qkv.weight, tuned.blocks[0].attn.qkv.weight)  # rebuilds for export


def test_mixed_precision_is_sampled_per_block_and_quantizes_only_the_named_layers():
    from conftest import small_vit

    from autocomp import compress
    from autocomp.ops.quantize import Int8Linear

    space = SearchSpace(weight_bits=(32, 8), quantize_layers=("all", "qkv,fc1"))
    trial = optuna.trial.FixedTrial(space.params({"b0.weight_bits": 8, "b0.quantize_layers": "qkv,fc1",
                                                  "b1.weight_bits": 8, "b1.quantize_layers": "all"}))
    recipe = space.sample(trial, [6, 6])
    assert recipe.summary() == "w8-sq[qkv,fc1] | w8-sq"
    model = compress(small_vit(), recipe, calibration=torch.randn(8, 3, 16, 16))
    int8 = {name for name, m in model.blocks.named_modules() if isinstance(m, Int8Linear)}
    assert int8 == {"0.attn.qkv", "0.mlp.fc1", "1.attn.qkv", "1.attn.proj", "1.mlp.fc1", "1.mlp.fc2"}


def test_a_rank_that_saves_nothing_on_the_square_proj_factorizes_the_layers_the_space_names():
    """rank 0.6 keeps more of the square ``proj``'s ranks than its two factors can save: the operator refuses it
    there, and so the whole setting in every block; without ``proj`` in ``lowrank_layers`` it factorizes the rest."""
    from conftest import small_vit

    from autocomp import compress
    from autocomp.ops.lowrank import LowRankLinear

    every = SearchSpace(rank=(0.6, 1.0))
    trial = optuna.trial.FixedTrial(every.params({"b0.rank": 0.6, "b1.rank": 1.0}))
    with pytest.raises(AutocompError, match=r"ranks of proj .* or leave 'proj' out of layers \(lowrank_layers in a "
                                            r"search space\)"):
        compress(small_vit(), every.sample(trial, [6, 6]))
    wide = dataclasses.replace(every, lowrank_layers=("qkv", "fc1", "fc2"))
    recipe = wide.sample(trial, [6, 6])
    assert recipe.summary() == "r0.6[qkv,fc1,fc2] | -"
    model = compress(small_vit(), recipe)
    factored = {name for name, m in model.blocks.named_modules() if isinstance(m, LowRankLinear)}
    assert factored == {"0.attn.qkv", "0.mlp.fc1", "0.mlp.fc2"}


def test_8_bit_blocks_are_smoothed_where_a_layernorm_feeds_what_they_quantize():
    from autocomp.search._local import recipe_key

    space = SearchSpace(weight_bits=(32, 8, 4), quantize_layers=("all", "proj,fc2"))
    trial = optuna.trial.FixedTrial(space.params({"b0.weight_bits": 8, "b0.quantize_layers": "all",
                                                  "b1.weight_bits": 8, "b1.quantize_layers": "proj,fc2",
                                                  "b2.weight_bits": 4, "b2.quantize_layers": "all"}))
    recipe = space.sample(trial, [6, 6, 6])
    assert [block["quantize"].smooth for block in recipe.blocks] == [0.5, None, None]
    assert dataclasses.replace(space, smooth=None).sample(trial, [6, 6, 6]).summary() == "w8 | w8[proj,fc2] | w4g64"
    with pytest.raises(AutocompError, match="smooth must be null"):
        SearchSpace(smooth=2.0)
    # a study recorded before quantize had smooth: the same recipe as one with its default
    earlier = recipe.to_dict()
    del earlier["blocks"][2]["quantize"]["smooth"]
    assert recipe_key(earlier) == recipe_key(recipe.to_dict())


def test_the_group_size_of_low_bit_blocks_is_the_spaces(tmp_path):
    space = SearchSpace(weight_bits=(32, 8, 4), group_size=32)
    trial = optuna.trial.FixedTrial(space.params({"b0.weight_bits": 8, "b1.weight_bits": 4, "b2.weight_bits": 32}))
    recipe = space.sample(trial, [6, 6, 6])
    assert recipe.summary() == "w8-sq | w4g32 | -"
    assert recipe.blocks[0]["quantize"] == SearchSpace(weight_bits=(32, 8, 4)).sample(trial, [6, 6, 6]).blocks[0][
        "quantize"]  # 8 bits: a scale per output channel, the same recipe whatever the group size
    path = tmp_path / "space.yaml"
    path.write_text("weight_bits: [32, 4]\ngroup_size: 128\n")
    assert load_space(path).group_size == 128
    path.write_text("weight_bits: [32, 4]\ngroup_size: 4\n")
    with pytest.raises(AutocompError, match=r"group_size must be a whole number >= 8, got 4"):
        load_space(path)
    path.write_text("weight_bits: [32, 4]\ngroup_size: 24\n")  # Quantize's, but no runtime kernel's
    with pytest.raises(AutocompError, match=r"group_size must be a multiple of 16, got 24: the low-bit kernels of "
                                            r"ONNX Runtime and OpenVINO take blocks of 16, 32, 64 ..., and other "):
        load_space(path)


def test_static_activations_are_a_choice_of_8_bit_blocks_only():
    """act_bits 8 runs for real only beside 8-bit weights: a block at other bits is never asked for it (a choice
    it would ignore, or simulate)."""
    from conftest import small_vit

    from autocomp import compress
    from autocomp.ops.quantize import Int8Linear, Int8StaticLinear, int8_static_range

    space = SearchSpace(weight_bits=(32, 8, 4), act_bits=(None, 8))
    trial = optuna.trial.FixedTrial(space.params({"b0.weight_bits": 8, "b0.act_bits": 8, "b1.weight_bits": 4,
                                                  "b2.weight_bits": 8, "b2.act_bits": None}))
    recipe = space.sample(trial, [6, 6, 6])
    assert recipe.summary() == "w8a8-sq | w4g64 | w8-sq"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        space.sample(trial, [6, 6, 6])
        for b in range(3):
            asked = f"b{b}.act_bits" in trial.params
            assert asked == (trial.params[f"b{b}.weight_bits#rank"] == 1), trial.params  # rank 1 of (4, 8, 32): 8
    model = compress(small_vit(depth=3), recipe, calibration=torch.randn(8, 3, 16, 16))
    static = Int8StaticLinear if int8_static_range() is not None else Int8Linear
    layers = {name.split(".")[0]: type(m) for name, m in model.blocks.named_modules() if "qkv" in name}
    assert layers["0"] is static and model.blocks[0].attn.qkv.act_qparams is not None
    assert layers["2"] is Int8Linear and model.blocks[2].attn.qkv.act_qparams is None
    assert SearchSpace(weight_bits=(32, 8), act_bits=(8,)).sample(
        optuna.trial.FixedTrial({"b0.weight_bits#rank": 0}), [6]).summary() == "w8a8-sq"  # the only choice: static


def test_a_block_made_8_bit_by_a_move_gets_the_choices_its_base_never_drew():
    """A local move from a 4-bit (or float) block to 8 bits needs the block's layers and activations, which its base
    never drew: completed with the first layers offered and dynamic activations (static where only they are)."""
    space = SearchSpace(weight_bits=(32, 8, 4), act_bits=(None, 8), quantize_layers=("all", "qkv,fc1"))
    base = space.params({"b0.weight_bits": 4, "b0.quantize_layers": "qkv,fc1", "b1.weight_bits": 32})
    moved = {**base, "b0.weight_bits#rank": 1, "b1.weight_bits#rank": 1}  # both blocks to 8 bits
    done = space.completed(moved, 2, allowed={"b1.act_bits": (8,)})
    assert done == {**moved, "b0.act_bits": None, "b1.quantize_layers": "all"}  # b1's one choice is no parameter
    recipe = space.sample(optuna.trial.FixedTrial(done), [6, 6], allowed={"b1.act_bits": (8,)})
    assert recipe.summary() == "w8-sq[qkv,fc1] | w8a8-sq"
    assert space.completed(base, 2) == base  # nothing missing


def test_fractions_that_keep_the_same_number_of_heads_are_offered_once():
    space = SearchSpace(heads_keep=(0.5, 0.67, 0.83, 1.0))
    assert space.distinct([6, 6]) == {}  # 3, 4, 5 and 6 heads: all different
    assert space.distinct([4, 6]) == {"b0.heads_keep": (0.5, 0.83, 1.0)}  # of 4 heads, 0.67 and 0.83 both keep 3
    # sampled within those choices, every head count of block 0 is drawn alike, and 3 heads is not drawn twice as often
    allowed = space.distinct([4, 6])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kept = [space.sample(study.ask(), [4, 6], allowed=allowed).blocks[0].get("prune_heads") for _ in range(600)]
    counts = [sum((k.keep if k else 4) == n for k in kept) for n in (2, 3, 4)]
    assert all(150 < c < 250 for c in counts), counts
    # a uniform space keeps a fraction that is distinct in any block
    assert dataclasses.replace(space, uniform=True).distinct([4, 4]) == {"all.heads_keep": (0.5, 0.83, 1.0)}
    assert dataclasses.replace(space, uniform=True).distinct([4, 6]) == {}


def test_a_block_is_offered_what_allowed_leaves_it_and_otherwise_the_whole_space():
    space = SearchSpace(heads_keep=(0.5, 0.83, 1.0), weight_bits=(32, 8))
    allowed = {"b1.heads_keep": (0.83, 1.0), "all.weight_bits": (32,)}
    assert space.offered(1, "heads_keep", allowed) == (0.83, 1.0)
    assert space.offered(0, "heads_keep", allowed) == (0.5, 0.83, 1.0)  # block 0 is not narrowed
    assert space.offered(1, "weight_bits", allowed) == (32, 8)  # "all." names a uniform space's parameter
    assert dataclasses.replace(space, uniform=True).offered(1, "weight_bits", allowed) == (32,)
    assert space.offered(1, "heads_keep") == (0.5, 0.83, 1.0)


@pytest.mark.parametrize("uniform, allowed, tokens, act", [
    (False, {}, (1.0,), (None,)), (False, {"b0.heads_keep": (1.0,), "b1.weight_bits": (8,)}, (0.7, 1.0), (None,)),
    (True, {}, (0.7, 1.0), (None,)), (False, {"b0.heads_keep": (1.0,), "b1.mlp_keep": (1.0,)}, (1.0,), (None, 8))])
def test_the_space_size_counts_every_different_recipe(uniform, allowed, tokens, act):
    from autocomp.search._local import recipe_key

    space = SearchSpace(heads_keep=(0.5, 1.0), mlp_keep=(0.5, 1.0), weight_bits=(32, 8, 4) if act[-1] else (32, 8),
                        quantize_layers=("all", "qkv,fc1"), tokens_keep=tokens, distill_steps=(0, 100),
                        distill_alpha=(0.5, 0.9), uniform=uniform, act_bits=act)
    recipes = set()

    def objective(trial):
        recipes.add(recipe_key(space.sample(trial, [4, 4], allowed=allowed).to_dict()))
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.BruteForceSampler(seed=0))
    study.optimize(objective)  # every combination of the parameters, then it stops
    assert space.size(2, allowed=allowed) == len(recipes) > 1


def test_pruning_tokens_on_a_model_without_a_class_token_is_refused_before_the_images_load():
    """Pruning ranks tokens by the class token's attention: on an average-pooled model without one the operator
    refused it in every block, and the search ran on without token reduction, said as 'refused in 2 of 3 blocks'."""
    import timm

    from autocomp.space import SearchSpace

    kwargs = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, num_classes=3)
    pooled = timm.create_model("vit_tiny_patch16_224", pretrained=False, class_token=False, global_pool="avg",
                               **kwargs)
    space = SearchSpace(tokens_keep=(0.7, 1.0), token_method="prune")
    with pytest.raises(AutocompError, match=r"^space.yaml: token_method prune ranks tokens by the class token's "
                                            r"attention, and this model has no class token: use token_method merge"):
        space.check_tokens(pooled, where="space.yaml")
    SearchSpace(tokens_keep=(0.7, 1.0)).check_tokens(pooled, where="space.yaml")  # merge: no class token needed
    SearchSpace(tokens_keep=(1.0,), token_method="prune").check_tokens(pooled, where="space.yaml")  # none offered
    space.check_tokens(timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs), where="space.yaml")


def test_blocks_of_their_own_narrow_what_the_search_samples_there(tmp_path):
    """``blocks:`` gives some blocks narrower choices (a first block kept in float, the last ones without token
    merging), resolved against the model's depth: every draw honours them, as do the starting parameters."""
    path = tmp_path / "space.yaml"
    path.write_text("heads_keep: [0.5, 0.67, 1.0]\ntokens_keep: [0.7, 1.0]\nweight_bits: [32, 8]\n"
                    "blocks:\n  0: {weight_bits: [32], heads_keep: [1.0]}\n  '-2..-1': {tokens_keep: [1.0]}\n"
                    "  '1': {heads_keep: [0.67, 1.0]}\n")  # a quoted index too (JSON's keys are strings)
    space = load_space(path).for_depth(4, where="space.yaml")
    assert space.blocks == {0: {"weight_bits": (32,), "heads_keep": (1.0,)}, 1: {"heads_keep": (0.67, 1.0)},
                            2: {"tokens_keep": (1.0,)}, 3: {"tokens_keep": (1.0,)}}
    heads = [3, 3, 3, 3]
    allowed = space.distinct(heads)  # the blocks' own, and one fraction per head count
    assert allowed["b0.weight_bits"] == (32,) and allowed["b2.tokens_keep"] == (1.0,)
    assert allowed["b1.heads_keep"] == allowed["b3.heads_keep"] == (0.67, 1.0)  # 0.5 and 0.67 keep 2 of 3 heads
    assert allowed["b0.heads_keep"] == (1.0,)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"b0": set(), "b1": set(), "b3": set(), "tokens": set()}
    for _ in range(40):
        trial = study.ask()
        recipe = space.sample(trial, heads, allowed=allowed)
        study.tell(trial, 0.0)
        assert "quantize" not in recipe.blocks[0] and "prune_heads" not in recipe.blocks[0]
        assert not any("reduce_tokens" in block for block in recipe.blocks[2:])
        seen["b1"].add(recipe.blocks[1]["prune_heads"].keep if "prune_heads" in recipe.blocks[1] else 3)
        seen["b3"].add(recipe.blocks[3]["prune_heads"].keep if "prune_heads" in recipe.blocks[3] else 3)
        seen["tokens"].add("reduce_tokens" in recipe.blocks[1])
    assert seen["b1"] == {2, 3} and seen["b3"] == {2, 3} and seen["tokens"] == {True, False}
    assert "b0.weight_bits#rank" not in trial.params and "b1.weight_bits#rank" in trial.params
    with pytest.raises(AutocompError, match=r"b0.weight_bits = 8 is not among the space's choices \[32\]"):
        space.params({"b0.weight_bits": 8}, allowed=allowed)
    # a setting of every block alike (a starting point, the coarse stage): the blocks' own least compressing where
    # they leave it out, and so still offered alike
    from autocomp.search._start import alike_choices, uniform_values
    assert uniform_values(space, {"weight_bits": 8, "tokens_keep": 0.7}, 4) == {
        "b0.weight_bits": 32, "b1.weight_bits": 8, "b2.weight_bits": 8, "b3.weight_bits": 8,
        "b0.tokens_keep": 0.7, "b1.tokens_keep": 0.7, "b2.tokens_keep": 1.0, "b3.tokens_keep": 1.0}
    alike = alike_choices(space, 4, allowed)
    assert alike["weight_bits"] == (32, 8) and alike["tokens_keep"] == (0.7, 1.0)
    with pytest.raises(AutocompError, match=r"^space.yaml: blocks: 4 names blocks the model does not have: it has 4 "
                                            r"\(0 to 3, or -4 to -1\)"):
        dataclasses.replace(space, blocks={4: {"heads_keep": [1.0]}}).for_depth(4, where="space.yaml")
    with pytest.raises(AutocompError, match=r"^space.yaml: blocks: '2..1' is a range written backwards \(blocks 2 "
                                            r"to 1 of 4\): write \"1..2\", first block to last$"):
        dataclasses.replace(space, blocks={"2..1": {"heads_keep": [1.0]}}).for_depth(4, where="space.yaml")
    with pytest.raises(AutocompError, match=r"^space.yaml: blocks: 1 and '0..2' both give block 1's heads_keep"):
        dataclasses.replace(space, blocks={1: {"heads_keep": [1.0]}, "0..2": {"heads_keep": [0.5, 1.0]}}).for_depth(
            4, where="space.yaml")


def test_blocks_that_leave_nothing_to_compress_are_refused_before_the_search():
    from autocomp.search._start import require_choices

    space = SearchSpace(weight_bits=(32, 8), blocks={"0..-1": {"weight_bits": [32]}}).for_depth(3, where="s")
    with pytest.raises(AutocompError, match=r"^s offers nothing to search: its blocks: leaves every block at its "
                                            r"least compressing choices"):
        require_choices(space, where="s", heads=[4, 4, 4])
    require_choices(dataclasses.replace(space, blocks={0: {"weight_bits": (32,)}}), where="s", heads=[4, 4, 4])


def test_uniform_int8_with_static_activations_starts_where_a_block_is_kept_in_float():
    """The starting points "uniform int8" (dynamic and static activations) with block 0 kept in float: both queued,
    block 0 in float, its activations not asked (it has no 8-bit choice)."""
    from autocomp.search._start import start_points

    space = SearchSpace(heads_keep=(0.5, 1.0), weight_bits=(32, 8), act_bits=(None, 8),
                        blocks={0: {"weight_bits": [32]}}).for_depth(3, where="s")
    points = dict(start_points(space, [4, 4, 4], predictor=None, limits={}, cap=8, allowed=space.distinct([4] * 3)))
    assert {"uniform weight_bits 8", "uniform weight_bits 8, static activations"} <= set(points)
    static = points["uniform weight_bits 8, static activations"]
    assert "b0.weight_bits#rank" not in static and static["b1.act_bits"] == 8 and "b0.act_bits" not in static
