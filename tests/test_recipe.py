"""Several networks in one step (side by side) and the budgeted recipe job (issue 26)."""

import jax
import numpy as np
import pytest

from fastnst import perceptual
from fastnst.step import (
    StepInputs,
    create_train_state,
    jit_side_by_side_step,
    jit_step,
    side_by_side_step,
    stack_states,
    unstack_state,
)
from tests.helpers import tiny_config, tiny_step


def _three_models(vgg_params, tmp_path, lr=1e-4):
    t = tiny_step(vgg_params, tiny_config(tmp_path), lr=lr)
    states = [create_train_state(t.net, jax.random.key(k), lr=lr) for k in range(3)]
    rng = np.random.default_rng(1)
    styles = [rng.uniform(0, 255, (32, 32, 3)).astype(np.float32) for _ in range(3)]
    grams = [perceptual.style_grams(vgg_params, s, t.spec.style_layers, 32) for s in styles]
    return t, states, grams


def test_side_by_side_step_equals_separate_steps(vgg_params, tmp_path):
    t, states, grams = _three_models(vgg_params, tmp_path)
    stacked = stack_states(states)  # (before the separate steps, which donate their states)
    alone = []
    for s, g in zip(states, grams, strict=True):
        for _ in range(2):
            s, m = jit_step()(s, t.batch, StepInputs(vgg_params, g, t.spec))
        alone.append((s, m))
    together = jax.tree.map(lambda *x: np.stack(x), *grams)
    for _ in range(2):
        stacked, ms = jit_side_by_side_step()(stacked, t.batch, StepInputs(vgg_params, together, t.spec))
    assert ms["loss"].shape == (3,)
    for i, (s, m) in enumerate(alone):
        # vmap batches the convolutions differently, so float32 sums are ordered differently:
        # equal to rounding, not bit for bit. Measured with the tests' settings (XLA optimisation
        # off, and on): losses 4.6e-7 relative, outputs 0.022 of 255 at most; bounds 4x that.
        np.testing.assert_allclose(ms["loss"][i], m["loss"], rtol=2e-6)
        mine = unstack_state(stacked, i)
        # Compared through the outputs with a small lr, not leaf by leaf: Adam's first steps move
        # every parameter by about +-lr whatever the size of its gradient, so where a gradient is
        # rounding noise (e.g. a conv bias right before an instance norm) the sign is arbitrary.
        np.testing.assert_allclose(t.net.apply({"params": mine.params}, t.x),
                                   t.net.apply({"params": s.params}, t.x), atol=0.09)
        assert int(mine.step) == 2
    # each network took its own step (towards its own style from its own start)
    assert len({round(float(v), 3) for v in ms["style"]}) == 3


def test_side_by_side_shares_the_content_pass(vgg_params, tmp_path):
    """VGG's first convolution (3 -> 64 channels) runs once on the N content targets, and once on
    the M x N outputs of the networks: the content pass is not repeated per model."""
    t, states, grams = _three_models(vgg_params, tmp_path)
    together = jax.tree.map(lambda *x: np.stack(x), *grams)
    jaxpr = jax.make_jaxpr(side_by_side_step)(stack_states(states), t.batch,
                                              StepInputs(vgg_params, together, t.spec))
    n = t.batch["target"].shape[0]
    firsts = []

    def walk(jx):
        for eq in jx.eqns:
            if eq.primitive.name == "conv_general_dilated" and eq.invars[1].aval.shape[-2:] == (3, 64):
                firsts.append(eq.invars[0].aval.shape[0])
            for v in eq.params.values():
                if hasattr(v, "jaxpr"):
                    walk(v.jaxpr)

    walk(jaxpr.jaxpr)
    assert sorted(firsts)[:2] == [n, 3 * n], firsts
    assert firsts.count(n) == 1, firsts


def _side_by_side_config(tmp_path, steps=4):
    from fastnst import images

    cfg = tiny_config(tmp_path, steps=steps)
    rng = np.random.default_rng(5)
    cfg.style_images = tuple(str(images.save_image(tmp_path / f"{n}.png", rng.uniform(0, 255, (48, 48, 3))))
                             for n in ("dots", "waves"))
    return cfg


def test_train_side_by_side_exports_each_network_and_resumes_bit_identically(tmp_path, weights_cache):
    import json

    from fastnst import modelfile, stylize, train

    cfg = _side_by_side_config(tmp_path)
    straight = train.train_and_evaluate(cfg, tmp_path / "straight", progress=False)
    assert [p.name for p in straight.model_paths] == ["model_dots.msgpack", "model_waves.msgpack"]
    a, b = (modelfile.load_model(p) for p in straight.model_paths)
    assert a.meta["style_image"].endswith("dots.png") and a.meta["steps"] == 4
    assert set(a.meta["final_metrics"]) == {"loss", "content", "style", "tv"}
    photo = np.random.default_rng(0).uniform(0, 255, (32, 32, 3))
    assert not np.allclose(stylize.apply(a, photo), stylize.apply(b, photo))
    line = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(line["loss"] - line["dots/loss"] - line["waves/loss"]) < 1e-3 * line["loss"]

    def stop_at_2(step, flag):
        if step == 2:
            flag.set = True

    assert train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False, on_step=stop_at_2).interrupted
    resumed = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False)
    for p, q in zip(straight.model_paths, resumed.model_paths, strict=True):
        for x, y in zip(jax.tree.leaves(modelfile.load_model(p).variables),
                        jax.tree.leaves(modelfile.load_model(q).variables), strict=True):
            np.testing.assert_array_equal(x, y)


def test_side_by_side_config_rules(tmp_path):
    from fastnst import schema
    from fastnst.errors import ConfigError

    cfg = _side_by_side_config(tmp_path)
    assert schema.validate(cfg).side_by_side == 2
    same = cfg.copy_and_resolve_references()
    same.style_images = (cfg.style_images[0], cfg.style_images[0])
    with pytest.raises(ConfigError, match="share a name"):
        schema.validate(same)
    nostyle = cfg.copy_and_resolve_references()
    nostyle.loss.style = 0.0
    with pytest.raises(ConfigError, match="need the style loss"):
        schema.validate(nostyle)


def test_plan_gives_every_unit_the_same_fraction_of_its_recipe():
    from types import SimpleNamespace

    from fastnst import recipe
    from fastnst.errors import ConfigError

    units = [SimpleNamespace(name="a", recipe_steps=1000), SimpleNamespace(name="b", recipe_steps=4000)]
    measured = {"a": {"step_s": 0.5, "warmup_steps": 5}, "b": {"step_s": 0.1, "warmup_steps": 5}}
    steps = recipe.plan(units, measured, 180.0)  # the whole recipe needs 500 + 400 s: 20% of it fits
    assert steps == {"a": 200, "b": 800}
    assert sum(steps[u.name] * measured[u.name]["step_s"] for u in units) <= 180.0
    assert recipe.plan(units, measured, 1e6) == {"a": 1000, "b": 4000}  # never more than the recipe
    assert recipe.plan(units, measured, 1.0) == {"a": 5, "b": 5}  # at least the warm-up's steps
    # a later slot: "a" already made 400 steps (40% of its recipe), "b" none. 160 s bring b to 40%,
    # the last 20 s move both on: 900 f - 200 = 180 s at f = 42.2%
    assert recipe.plan(units, measured, 180.0, done={"a": 400, "b": 0}) == {"a": 422, "b": 1688}
    with pytest.raises(ConfigError, match="--units: unknown sr_x3"):
        recipe.select_units(units, "a,sr_x3")
    assert [u.name for u in recipe.select_units(units, "b")] == ["b"]



@pytest.mark.slow  # a subprocess running the whole job: about 1.5 minutes
def test_recipe_dry_run_trains_exports_and_evaluates_the_whole_set(shared_data, tmp_path):
    """bin/recipe at toy sizes, as a user runs it: the plan first, every model exported with its
    card, Fig. 5 per style, Table 2 (with and without histogram matching) per SR model, gallery
    and report."""
    from fastnst import modelfile, recipe
    from tests.helpers import run_cli

    out = tmp_path / "job"
    # A budget this toy job never needs all of (it stops at the toy recipe's 12 steps per unit), so
    # that what it trains does not depend on the machine's speed: at 5 minutes a loaded machine
    # left the last units no time (they are then skipped, as the report says).
    r = run_cli("bin/recipe", "--dry-run", "--budget-minutes=30", "--styles=candy,mosaic", f"--out={out}",
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.index("planned steps") < r.stdout.index("evaluated candy")  # the plan comes first
    names = ["candy", "mosaic", *recipe.SR_UNITS]
    assert sorted(p.stem for p in (out / "models").glob("*.msgpack")) == sorted(names)
    for name in names:
        m = modelfile.load_model(out / "models" / f"{name}.msgpack")
        card = (out / "models" / f"{name}.md").read_text()
        sr = recipe.SR_UNITS.get(name)
        assert f"paper recipe {recipe.TOY.sr_steps if sr else recipe.TOY.style_steps}" in card
        assert m.meta["steps"] >= recipe.TOY.warmup
        assert m.config["upsample"] == "resize_conv"
        if sr:
            assert m.config["task"] == "sr" and m.config["scale"] == sr[0]
            for suffix in ("", "_histmatch"):
                assert (out / "eval" / f"{name}{suffix}" / "table.md").is_file()
        else:
            assert m.config["norm"] == "instance_floor" and m.meta["style_image"].endswith(f"{name}.jpg")
            assert (out / "eval" / name / "table.md").is_file()
    import json

    recorded = json.loads((out / "runs" / "sr_x4_bicubic" / "config.json").read_text())
    assert recorded["data"]["sr_sigma"] == 0.0
    # the photos on the device and K steps per call, the way the GPU job trains
    assert recorded["data"]["on_device"] is True and recorded["train"]["steps_per_dispatch"] == 3
    # every unit's state carried out, and back into a fresh folder at the steps each model reached
    from fastnst import carry

    back = carry.unpack(out / "carry", tmp_path / "next")
    assert back == {n: modelfile.load_model(out / "models" / f"{n}.msgpack").meta["steps"] for n in names}
    assert sum(f.stat().st_size for f in (out / "carry").iterdir()) < 64 * 2**20
    report = (out / "report.md").read_text()
    assert "- unit: candy" in (out / "models" / "candy.md").read_text()  # one network per style unit
    assert "| candy |" in (out / "plan.md").read_text() and "| mosaic |" in (out / "plan.md").read_text()
    assert "## Targets" in report and "sr_x4_bicubic: Set5" in report and "candy: network objective" in report
    assert (out / "gallery.jpg").stat().st_size > 10_000 and (out / "plan.md").is_file()


def test_style_networks_are_units_of_their_own_unless_side_by_side(tmp_path):
    from fastnst import recipe

    paths = [tmp_path / f"{n}.jpg" for n in ("ink", "sun")]
    alone = recipe.units(recipe.TOY, styles=paths, photos=str(tmp_path), precision="float32")
    assert [u.name for u in alone][:2] == ["ink", "sun"]
    assert [u.config.style_image for u in alone[:2]] == [str(p) for p in paths]
    assert not any(u.config.get("style_images") for u in alone)
    together = recipe.units(recipe.TOY, styles=paths, photos=str(tmp_path), precision="float32",
                            side_by_side=True)
    assert together[0].name == "styles" and together[0].config.style_images == tuple(map(str, paths))
    assert [u.name for u in recipe.select_units(alone, "styles,sr_x8_pixel")] == ["ink", "sun", "sr_x8_pixel"]
    assert [u.name for u in recipe.select_units(together, "styles")] == ["styles"]


def test_a_unit_planned_at_zero_steps_is_named_not_started(tmp_path, monkeypatch):
    """On the H200 the side-by-side warm-up took most of the budget and the styles after the first
    were planned at 0 steps: the job must go on with the others, not stop on a refused config."""
    import time

    from fastnst import recipe, train

    paths = [tmp_path / f"{n}.jpg" for n in ("ink", "sun")]
    job = recipe.units(recipe.TOY, styles=paths, photos=str(tmp_path), precision="float32")[:2]
    started = []
    monkeypatch.setattr(train, "train_and_evaluate", lambda c, workdir, **k: started.append(workdir))
    m = {"step_s": 0.1, "startup_s": 1.0, "warmup_steps": 0}
    reached, cards, notes = recipe.train_units(job, tmp_path, {"ink": 0, "sun": 0}, {"ink": m, "sun": m},
                                               time.monotonic() + 60, log=lambda s: None)
    assert started == [] and reached == {"ink": 0, "sun": 0} and cards == {}
    assert notes == [f"{n}: not trained: no time was left for it in the budget." for n in ("ink", "sun")]


def test_an_interrupted_unit_stops_the_job(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM during a unit's training: the trainer saves its checkpoint and returns;
    the job must stop there (exit 130 via the CLI), not go on to the next unit and evaluation."""
    import time

    from fastnst import recipe, train

    paths = [tmp_path / f"{n}.jpg" for n in ("ink", "sun")]
    job = recipe.units(recipe.TOY, styles=paths, photos=str(tmp_path), precision="float32")[:2]
    started = []

    def stopped(c, workdir, **k):
        started.append(workdir)
        return train.TrainResult(model_path=None, step=3, interrupted=True, bad_files=0, last_metrics={})

    monkeypatch.setattr(train, "train_and_evaluate", stopped)
    m = {"step_s": 0.1, "startup_s": 1.0, "warmup_steps": 0}
    with pytest.raises(KeyboardInterrupt):
        recipe.train_units(job, tmp_path, {"ink": 5, "sun": 5}, {"ink": m, "sun": m}, time.monotonic() + 60,
                           log=lambda s: None)
    assert started == [tmp_path / "runs" / "ink"]  # "sun" never started
    with pytest.raises(KeyboardInterrupt):
        recipe.measure(job[1], tmp_path / "runs" / "sun", 3)
    assert not (tmp_path / "runs" / "sun" / "measured.json").exists()


def test_recipe_refuses_bad_input_in_one_line(tmp_path):
    from tests.helpers import one_line_error, run_cli

    zero = run_cli("bin/recipe", "--budget-minutes=0", f"--out={tmp_path}")
    assert "budget-minutes" in one_line_error(zero, 2)
    line = one_line_error(run_cli("bin/recipe", "--budget-minutes=1", "--styles=no_such_style",
                                  f"--out={tmp_path}"))
    assert "no_such_style" in line
    line = one_line_error(run_cli("bin/recipe", "--budget-minutes=1", "--units=styles,sr_x3",
                                  f"--out={tmp_path}"))
    assert "--units: unknown sr_x3" in line and not list(tmp_path.iterdir())  # refused before anything ran
    line = one_line_error(run_cli("bin/recipe", "--budget-minutes=1", "--sr-sets=Set5,Urban100",
                                  f"--out={tmp_path}"))
    assert "--sr-sets: Urban100" in line and not list(tmp_path.iterdir())
    assert "--budget-minutes" in one_line_error(run_cli("bin/recipe", f"--out={tmp_path}"), 2)
    line = one_line_error(run_cli("bin/recipe", f"--models-from-carry={tmp_path / 'none'}",
                                  f"--out={tmp_path}"))
    assert "no carried state" in line


def test_bench_recipe_tables(tmp_path, monkeypatch):
    """bin/bench --recipe's two tables at toy sizes: the side-by-side steps go through the training
    loop, which trains as many networks as the row says (one row per network count), each towards
    its own style; the loader reads the folder twice (first pass, cached)."""
    from fastnst import bench_train, schema, train
    from fastnst.configs import style as style_config
    from tests.helpers import write_photos

    trained = []  # (networks trained side by side, distinct style images) of each run the table timed
    real = train.train_and_evaluate

    def spy(config, *a, **k):
        cfg = schema.load(config)
        trained.append((cfg.side_by_side or 1, len(set(cfg.style_images)) or 1))
        return real(config, *a, **k)

    monkeypatch.setattr(train, "train_and_evaluate", spy)
    tiny = {"norm": "instance", "upsample": "resize_conv", "padding": "paper", "width": 0.125}
    rows = bench_train.side_by_side(style_config.get_config().loss.to_dict(), counts=(1, 2), size=32,
                                    variant=tiny, repeats=1)
    assert [r["networks"] for r in rows] == [1, 2] and trained == [(1, 1), (2, 2)]
    assert all(r["step_s"] > 0 and r["compile_s"] >= 0 for r in rows)
    loader = bench_train.loader(str(write_photos(tmp_path / "photos", 6)), workers=(1, 2), size=32, batch=2,
                                batches=3)
    assert [r["workers"] for r in loader] == [1, 2]
    assert all(r["cold_images_per_s"] > 0 and r["cached_images_per_s"] > 0 for r in loader)
    assert "networks side by side" in bench_train.markdown({"side_by_side": rows, "loader": loader})


def test_recipe_multistyle_unit_ships_each_style_as_its_own_model(tmp_path):
    import jax

    from fastnst import modelfile, nets, recipe, schema, styles, stylize
    from tests.helpers import write_photos

    paths = [tmp_path / f"{n}.jpg" for n in ("ink", "sun")]
    job = recipe.units(recipe.TOY, styles=paths, photos=str(write_photos(tmp_path / "p", 4)),
                       precision="float32", multistyle=True)
    unit = job[0]
    assert unit.is_multistyle and unit.config.model.num_styles == 2 and len(job) == 1 + len(recipe.SR_UNITS)
    for u in job[1:]:
        assert schema.validate(u.config).model["upsample"] == "resize_conv"
    net = nets.build(unit.config.model.to_dict())
    v = nets.init(net, jax.random.key(1))
    v = jax.tree.map(lambda x: x + np.arange(x.shape[0])[:, None] if np.ndim(x) == 2 else x, v)  # rows differ
    work = tmp_path / "runs" / "styles"
    modelfile.save_model(work / "model.msgpack", unit.config.model.to_dict(), v,
                         meta={"styles": ["ink", "sun"]})
    files = unit.model_files(work)
    assert list(files) == ["ink", "sun"]
    photo = np.random.default_rng(0).uniform(0, 255, (24, 24, 3))
    multi = modelfile.load_model(work / "model.msgpack")
    for name, path in files.items():
        one = modelfile.load_model(path)
        assert one.config["norm"] == "instance_floor" and one.meta["style_image"].endswith(f"{name}.jpg")
        np.testing.assert_array_equal(stylize.apply(one, photo),
                                      stylize.apply(styles.select(multi, name), photo))


@pytest.mark.slow  # two bin/recipe processes at toy sizes: about 45 s
def test_recipe_parallel_runs_each_unit_in_its_own_process_and_gathers_them(shared_data, tmp_path):
    from tests.helpers import run_cli

    out = tmp_path / "job"
    r = run_cli("bin/recipe", "--dry-run", "--parallel", "--budget-minutes=3", "--styles=candy",
                "--units=candy,sr_x4_pixel", f"--out={out}", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 units running at once" in r.stdout
    for name in ("candy", "sr_x4_pixel"):
        assert (out / "units" / name / "report.md").is_file() and (out / "units" / f"{name}.log").is_file()
        assert (out / "models" / f"{name}.msgpack").read_bytes() == \
            (out / "units" / name / "models" / f"{name}.msgpack").read_bytes()
        assert (out / "models" / f"{name}.md").is_file()
    report = (out / "report.md").read_text()
    assert "| candy | 0 | candy | units/candy/report.md |" in report
    from fastnst import carry  # the job packs both units' state, the processes none

    assert sorted(carry.unpack(out / "carry", tmp_path / "next")) == ["candy", "sr_x4_pixel"]
    assert not (out / "units" / "candy" / "carry").exists()
    assert "- candy: network objective" in report and "- sr_x4_pixel: Set5 PSNR" in report


def test_parallel_report_names_a_unit_that_failed_and_its_log(tmp_path):
    from fastnst import recipe_parallel

    good = tmp_path / "units" / "ink"
    (good / "models").mkdir(parents=True)
    (good / "models" / "ink.msgpack").write_bytes(b"model")
    (good / "models" / "ink.md").write_text("# ink\n")
    (good / "report.md").write_text("# r\n\n## Targets\n\n- ink: met\n\n## ink\n\n- not a target\n")
    codes = {"ink": 0, "sr_x4_pixel": 1}
    report = recipe_parallel.gather(tmp_path, list(codes), codes).read_text()
    assert "| sr_x4_pixel | 1 | - | none: units/sr_x4_pixel.log |" in report
    assert report.split("## Targets")[1].split() == ["-", "ink:", "met"]  # only the Targets section's lines
    assert (tmp_path / "models" / "ink.msgpack").read_bytes() == b"model"


def test_parallel_stops_a_unit_that_outlives_budget_and_grace(tmp_path, monkeypatch):
    """No process may keep the job waiting forever: one that is still running after the budget and
    the grace is stopped (SIGTERM), reported with its exit status, and the others' models gathered."""
    import time

    from fastnst import recipe_parallel

    fake = tmp_path / "fake_recipe"  # sleeps as a hung unit would; "quick" ends at once with a model
    fake.write_text("import sys, time, pathlib\n"
                    "out = pathlib.Path([a for a in sys.argv if a.startswith('--out=')][0][6:])\n"
                    "if '--units=quick' in sys.argv:\n"
                    "    (out / 'models').mkdir(parents=True)\n"
                    "    (out / 'models' / 'quick.msgpack').write_bytes(b'm')\n"
                    "else:\n    time.sleep(600)\n")
    monkeypatch.setattr(recipe_parallel, "COMMAND", (str(fake),))
    t = time.monotonic()
    report = recipe_parallel.run(tmp_path / "job", names=["hung", "quick"], budget_minutes=0.01, argv=[],
                                 log=lambda s: None, grace_s=1.0).read_text()
    assert time.monotonic() - t < 60
    assert "| hung | -15 | - | none: units/hung.log |" in report
    assert (tmp_path / "job" / "models" / "quick.msgpack").read_bytes() == b"m"
