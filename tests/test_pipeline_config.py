"""The pipeline's config is composed of the methods' own configs: sections, the pipeline's defaults,
wired options, --set, the flat names of earlier versions, and a run's saved pipeline.yaml."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from rlhfkit.config import PPOConfig, RewardConfig, SFTConfig
from rlhfkit.pipeline.config import (
    SECTION_DEFAULTS, SECTIONS, PipelineConfig, bundled_config_path, load_pipeline_config, parse_sets, preset_overrides, wire,
)


def test_sections_are_the_methods_configs_with_the_pipelines_defaults():
    cfg = PipelineConfig()
    for name, cls in SECTIONS.items():
        assert type(getattr(cfg, name)) is cls
    assert cfg.ppo.max_kl == 3.0 and PPOConfig(prompts="p").max_kl == 0.0  # the pipeline's default, not the command's
    assert cfg.sft.lr == SECTION_DEFAULTS["sft"]["lr"] != SFTConfig(data="d").lr
    assert cfg.ppo.clip_eps == PPOConfig(prompts="p").clip_eps  # everything else: the command's default
    # the demo trains its reward model 2 epochs (1 left PPO within 1 SE of SFT, README); the command's default is 1
    assert cfg.reward.epochs == 2.0 != RewardConfig(data="d").epochs
    # what `rlhfkit demo` loads: the bundled YAML, then the preset
    assert load_pipeline_config(bundled_config_path(), preset_overrides("demo")).reward.epochs == 2.0
    assert load_pipeline_config(bundled_config_path(), preset_overrides("smoke")).reward.epochs == 1.0


def test_yaml_sections_flags_and_sets_layer_in_order(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny", "ppo": {"steps": 7, "lr": 2e-5}, "sft": {"epochs": 2}}))
    cfg = load_pipeline_config(path, {"seed": 3, "ppo": {"steps": 5}}, parse_sets(["ppo.lr=1e-4", "sft.batch_size=4", "eval_prompts=9"]))
    assert (cfg.model, cfg.seed, cfg.eval_prompts) == ("tiny", 3, 9)
    assert (cfg.ppo.steps, cfg.ppo.lr, cfg.ppo.max_kl) == (5, 1e-4, 3.0)
    assert (cfg.sft.epochs, cfg.sft.batch_size, cfg.sft.lr) == (2.0, 4, 5e-5)
    assert isinstance(cfg.sft.epochs, float) and isinstance(cfg.eval_prompts, int)


@pytest.mark.parametrize("sets, message", [
    (["ppo.stepz=3"], r"unknown option ppo.stepz \(see `rlhfkit ppo --help`\)"),
    (["ppo.model=x"], r"ppo.model is set by the pipeline \(this run's SFT model\)"),
    (["best_of_n.missing_eos_penalty=0"], r"set by ppo.missing_eos_penalty"),
    (["ppo.steps=many"], r"steps must be int, got 'many'"),
    (["nonsense=1"], r"unknown option 'nonsense' for the pipeline"),
    (["ppo.steps"], r"expected SECTION.OPTION=VALUE"),
])
def test_bad_settings_say_what_is_wrong(sets, message):
    with pytest.raises(ValueError, match=message):
        load_pipeline_config(None, parse_sets(sets))


def test_a_section_must_be_a_mapping(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("ppo: 3\n")
    with pytest.raises(ValueError, match=r"p.yaml: ppo must be a mapping of option: value"):
        load_pipeline_config(path)


def test_flat_names_of_earlier_versions_still_load_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"ppo_steps": 4, "ei_prompts": 8, "rm_lr": 1e-3, "ppo_log_gold": False, "bon_n": 2}))
    with pytest.warns(FutureWarning, match="ppo_steps -> ppo.steps"):
        cfg = load_pipeline_config(path)
    assert (cfg.ppo.steps, cfg.expert_iteration.prompts_per_round, cfg.reward.lr, cfg.log_gold, cfg.best_of_n.n) == (4, 8, 1e-3, False, 2)


def test_wire_points_every_method_at_this_runs_files(tmp_path):
    cfg = wire(PipelineConfig(model="tiny", seed=5, max_new_tokens=9, eval_temperature=0.7, gen_batch_size=11), tmp_path, "no")
    assert cfg.sft.model == "tiny" and cfg.sft.out == str(tmp_path / "sft")
    assert cfg.reward.model == cfg.ppo.model == cfg.best_of_n.model == cfg.expert_iteration.model == str(tmp_path / "sft")
    assert cfg.ppo.reward_model == cfg.best_of_n.reward_model == str(tmp_path / "reward")
    assert {c.seed for c in (cfg.sft, cfg.reward, cfg.ppo, cfg.best_of_n, cfg.expert_iteration)} == {5}
    assert (cfg.ppo.max_new_tokens, cfg.best_of_n.max_new_tokens, cfg.best_of_n.temperature, cfg.best_of_n.batch_size) == (9, 9, 0.7, 11)
    assert cfg.best_of_n.missing_eos_penalty == cfg.expert_iteration.missing_eos_penalty == cfg.ppo.missing_eos_penalty


def test_ppo_seed_reseeds_ppo_alone(tmp_path):
    """--ppo-seed N reruns PPO on a finished run's data with its own seed; every other stage keeps seed."""
    cfg = wire(load_pipeline_config(None, parse_sets(["seed=5", "ppo_seed=8"])), tmp_path, "no")
    assert cfg.ppo.seed == 8
    assert {c.seed for c in (cfg.sft, cfg.reward, cfg.best_of_n, cfg.expert_iteration, cfg.dpo, cfg.rloo)} == {5}
    assert wire(load_pipeline_config(None, parse_sets(["seed=5"])), tmp_path, "no").ppo.seed == 5
    with pytest.raises(ValueError, match="ppo.seed is set by the top-level seed, or ppo_seed"):
        load_pipeline_config(None, parse_sets(["ppo.seed=8"]))


def test_a_saved_pipeline_yaml_loads_back_and_is_rewired(tmp_path):
    from rlhfkit.config import save_config

    run = tmp_path / "run"
    cfg = wire(load_pipeline_config(None, preset_overrides("smoke"), {"out": str(run)}), run, "no")
    save_config(cfg, run / "pipeline.yaml")
    with pytest.raises(ValueError, match="is set by"):  # as a user's config, wired values are refused
        load_pipeline_config(run / "pipeline.yaml")
    back = load_pipeline_config(run / "pipeline.yaml", {"stages": "eval"}, allow_wired=True)
    assert wire(back, run, "no") == dataclasses.replace(cfg, stages="eval")


def test_a_section_given_as_a_mapping_in_python():
    cfg = PipelineConfig(ppo={"steps": 4}, expert_iteration={"rounds": 1})
    assert (cfg.ppo.steps, cfg.ppo.max_kl, cfg.expert_iteration.rounds) == (4, 3.0, 1)
    with pytest.raises(ValueError, match="unknown option ppo.nope"):
        PipelineConfig(ppo={"nope": 1})


def test_a_presets_none_is_a_value():
    """The smoke preset's system_prompt=None used to be dropped like a flag left out (the tiny model then
    got the default system message)."""
    assert load_pipeline_config(None, preset_overrides("smoke")).system_prompt is None
    assert load_pipeline_config(None, {}).system_prompt == PipelineConfig().system_prompt
