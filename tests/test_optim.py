"""Optimizers, schedules, regularizers, conditional gradient and the weight-norm callback.

    .venv/bin/pytest tests/test_optim.py -q

Real tf_keras objects throughout; the conditional-gradient update is checked against the
TensorFlow Addons formula computed independently in numpy, and its norm bound on a small
logistic problem where plain SGD's weights grow without bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.config import ConfigError, load_config
from pipeline.core.tfk import keras
from pipeline.training import optim

ROOT = Path(__file__).resolve().parents[1]


def _train(*overrides: str):
    return load_config("sample", overrides=list(overrides)).train


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["train.schedule=cosine"], "ReduceLROnPlateau needs a settable rate; set train.reduce_lr=false"),
        (["train.schedule=inverse_time", "train.reduce_lr=true"], "train.schedule=constant"),
        (["train.optimizer=lion"], "unknown train.optimizer 'lion'"),
        (["train.schedule=linear", "train.reduce_lr=false"], "unknown train.schedule 'linear'"),
        (["train.schedule=piecewise", "train.reduce_lr=false", "train.schedule_boundaries=[10,20]",
          "train.schedule_values=[0.1,0.01]"], "needs N boundaries and N+1 values, got 2 boundaries and 2"),
        (["train.schedule=piecewise", "train.reduce_lr=false", "train.schedule_boundaries=[20,10]",
          "train.schedule_values=[0.1,0.01,0.001]"], "positive and increasing"),
        (["train.schedule_warmup_steps=10"], "only applies to train.schedule=cosine"),
        (["train.clipnorm=1.0", "train.global_clipnorm=1.0"], "at most one of train.clipnorm"),
        (["train.clipvalue=0"], "train.clipvalue must be > 0"),
        (["train.optimizer=adamw"], "needs train.weight_decay > 0"),
        (["train.optimizer=cg", "train.learning_rate=1.5", "train.reduce_lr=false"],
         "needs learning rates in (0, 1]"),
        (["train.optimizer=cg", "train.learning_rate=0.9"], "cannot use train.reduce_lr=true"),
        (["train.optimizer=cg", "train.learning_rate=0.9", "train.cg_lambda=0", "train.reduce_lr=false"],
         "train.cg_lambda must be > 0"),
    ],
)
def test_validate_rejects_bad_combinations_in_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        _train(*overrides)  # rejected when the config is loaded
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_validate_accepts_every_optimizer_and_schedule():
    for name in optim.OPTIMIZERS:
        extra = {"adamw": ["train.weight_decay=0.004"],
                 "cg": ["train.learning_rate=0.99", "train.reduce_lr=false"]}.get(name, [])
        assert _train(f"train.optimizer={name}", *extra).optimizer == name
    for name in optim.SCHEDULES:
        extra = []
        if name == "piecewise":
            extra = ["train.schedule_boundaries=[5]", "train.schedule_values=[0.1,0.01]"]
        assert _train(f"train.schedule={name}", "train.reduce_lr=false", *extra).schedule == name


# --- schedules -----------------------------------------------------------------------------


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_constant_is_a_plain_float():
    assert optim.build_schedule(_train("train.learning_rate=0.02"), 10) == 0.02


def test_inverse_time_and_exponential_follow_their_formulas_with_auto_decay_of_one_epoch():
    steps = np.array([0, 5, 10, 25, 100])
    inv = optim.build_schedule(_train("train.schedule=inverse_time", "train.reduce_lr=false",
                                      "train.learning_rate=1e-3", "train.schedule_decay_rate=1.0"),
                               steps_per_epoch=10)
    assert isinstance(inv, keras.optimizers.schedules.InverseTimeDecay)
    np.testing.assert_allclose(_values(inv, steps), 1e-3 / (1 + steps / 10), rtol=1e-6)
    exp = optim.build_schedule(_train("train.schedule=exponential", "train.reduce_lr=false",
                                      "train.learning_rate=1e-3", "train.schedule_decay_rate=0.5",
                                      "train.schedule_decay_steps=20"), 10)
    assert isinstance(exp, keras.optimizers.schedules.ExponentialDecay)
    np.testing.assert_allclose(_values(exp, steps), 1e-3 * 0.5 ** (steps / 20), rtol=1e-6)


def test_piecewise_uses_boundaries_and_values():
    sch = optim.build_schedule(_train("train.schedule=piecewise", "train.reduce_lr=false",
                                      "train.schedule_boundaries=[10,20]",
                                      "train.schedule_values=[0.1,0.01,0.001]"), 10)
    assert isinstance(sch, keras.optimizers.schedules.PiecewiseConstantDecay)
    np.testing.assert_allclose(_values(sch, [0, 10, 11, 20, 21, 99]), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_warms_up_linearly_then_decays_to_zero_at_the_end_of_the_run():
    # epochs=4 × 25 steps = 100 steps: 10 warmup + 90 cosine (decay_steps=0 → rest of the run).
    sch = optim.build_schedule(_train("train.schedule=cosine", "train.reduce_lr=false", "train.epochs=4",
                                      "train.learning_rate=0.1", "train.schedule_warmup_steps=10"), 25)
    assert isinstance(sch, keras.optimizers.schedules.CosineDecay)
    np.testing.assert_allclose(_values(sch, [0, 5, 10]), [0.0, 0.05, 0.1], atol=1e-7)
    np.testing.assert_allclose(float(sch(55)), 0.05, rtol=1e-5)  # half-way down the cosine
    assert float(sch(100)) == pytest.approx(0.0, abs=1e-8)
    decay = _values(sch, range(10, 101))
    assert np.all(np.diff(decay) <= 1e-9)


# --- optimizers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "cls", "attrs"),
    [
        (["train.optimizer=adam", "train.beta_1=0.8", "train.amsgrad=true", "train.epsilon=1e-6"],
         "Adam", {"beta_1": 0.8, "amsgrad": True, "epsilon": 1e-6}),
        (["train.optimizer=adamw", "train.weight_decay=0.01"], "AdamW", {"weight_decay": 0.01}),
        (["train.optimizer=sgd", "train.momentum=0.8", "train.nesterov=true", "train.clipvalue=0.5"],
         "SGD", {"momentum": 0.8, "nesterov": True, "clipvalue": 0.5}),
        (["train.optimizer=rmsprop", "train.rmsprop_rho=0.8", "train.clipnorm=2.0"],
         "RMSprop", {"rho": 0.8, "clipnorm": 2.0}),
        (["train.optimizer=cg", "train.learning_rate=0.9", "train.cg_lambda=3.0",
          "train.global_clipnorm=1.0", "train.reduce_lr=false"],
         "ConditionalGradient", {"lambda_": 3.0, "global_clipnorm": 1.0}),
    ],
)
def test_build_optimizer_maps_every_option(overrides, cls, attrs):
    opt = optim.build_optimizer(_train(*overrides), 10)
    assert type(opt).__name__ == cls
    assert isinstance(opt, keras.optimizers.Optimizer)  # the new-style API, not legacy
    config = opt.get_config()
    for key, value in attrs.items():
        assert config[key] == pytest.approx(value) if isinstance(value, float) else config[key] == value


def test_optimizer_carries_the_schedule():
    opt = optim.build_optimizer(_train("train.optimizer=sgd", "train.schedule=exponential",
                                       "train.learning_rate=1e-3", "train.reduce_lr=false",
                                       "train.schedule_decay_rate=0.5"), 4)
    var = tf.Variable([1.0])
    for _ in range(5):
        opt.apply_gradients([(tf.constant([0.0]), var)])
    # The 5th update used the rate at step 4 = one epoch (auto decay_steps) of decay.
    assert float(opt.learning_rate) == pytest.approx(1e-3 * 0.5, rel=1e-5)


def test_global_clipnorm_and_clipvalue_bound_the_step():
    var_a, var_b = tf.Variable([0.0, 0.0]), tf.Variable([0.0])
    opt = optim.build_optimizer(_train("train.optimizer=sgd", "train.momentum=0", "train.learning_rate=1.0",
                                       "train.global_clipnorm=1.0"), 10)
    opt.apply_gradients([(tf.constant([30.0, 40.0]), var_a), (tf.constant([0.0]), var_b)])
    np.testing.assert_allclose(var_a.numpy(), [-0.6, -0.8], rtol=1e-6)  # (30,40)/50 · lr
    var_c = tf.Variable([0.0, 0.0])
    opt = optim.build_optimizer(_train("train.optimizer=sgd", "train.momentum=0", "train.learning_rate=1.0",
                                       "train.clipvalue=0.25"), 10)
    opt.apply_gradients([(tf.constant([30.0, -0.1]), var_c)])
    np.testing.assert_allclose(var_c.numpy(), [-0.25, 0.1], rtol=1e-6)


def test_kernel_regularizer_kinds():
    cfg = load_config("sample")
    assert optim.kernel_regularizer(cfg.model) is None
    l1 = optim.kernel_regularizer(load_config("sample", overrides=["model.l1=0.01"]).model)
    l2 = optim.kernel_regularizer(load_config("sample", overrides=["model.l2=0.02"]).model)
    both = optim.kernel_regularizer(load_config("sample", overrides=["model.l1=0.01", "model.l2=0.02"]).model)
    assert isinstance(l1, keras.regularizers.L1) and isinstance(l2, keras.regularizers.L2)
    assert isinstance(both, keras.regularizers.L1L2)
    w = tf.constant([[1.0, -2.0]])
    assert float(l1(w)) == pytest.approx(0.03)
    assert float(l2(w)) == pytest.approx(0.1)
    assert float(both(w)) == pytest.approx(0.13)
    with pytest.raises(ConfigError, match=r"model\.l2 must be >= 0, got -1"):
        load_config("sample", overrides=["model.l2=-1"])  # rejected when the config is loaded


# --- conditional gradient ------------------------------------------------------------------


def _tfa_reference(w, g, lr, lam, eps=1e-7):
    """tfa.optimizers.ConditionalGradient(ord="fro")._resource_apply_dense, in numpy."""
    return w * lr - (1 - lr) * lam * g / (np.sqrt(np.sum(g.astype(np.float64) ** 2)) + eps)


def test_conditional_gradient_matches_the_tfa_update_per_variable():
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    v1, v2 = tf.Variable(w1), tf.Variable(w2)
    opt = optim.ConditionalGradient(learning_rate=0.9, lambda_=2.0, epsilon=1e-7)
    for _ in range(3):
        g1, g2 = rng.normal(size=w1.shape).astype(np.float32), rng.normal(size=w2.shape).astype(np.float32)
        opt.apply_gradients([(tf.constant(g1), v1), (tf.constant(g2), v2)])
        # Each variable normalises by its OWN gradient norm (not the global one).
        w1, w2 = _tfa_reference(w1, g1, 0.9, 2.0), _tfa_reference(w2, g2, 0.9, 2.0)
        np.testing.assert_allclose(v1.numpy(), w1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v2.numpy(), w2, rtol=1e-5, atol=1e-6)
    zero = tf.Variable([1.0, 2.0])
    opt = optim.ConditionalGradient(learning_rate=0.9, lambda_=2.0)
    opt.apply_gradients([(tf.zeros(2), zero)])  # epsilon: no NaN on a zero gradient
    np.testing.assert_allclose(zero.numpy(), [0.9, 1.8], rtol=1e-6)


def test_conditional_gradient_update_compiles_with_xla():
    # Keras enables the XLA update step only when a GPU is visible; force it to check that
    # update_step is XLA-compilable (the GPU/TPU path) and gives the same numbers.
    w = np.array([[3.0, 4.0], [1.0, -2.0]], np.float32)
    g = np.array([[1.0, 0.0], [2.0, 2.0]], np.float32)
    var = tf.Variable(w)
    opt = optim.ConditionalGradient(learning_rate=0.9, lambda_=2.0)
    opt.jit_compile = True
    opt.apply_gradients([(tf.constant(g), var)])
    np.testing.assert_allclose(var.numpy(), _tfa_reference(w, g, 0.9, 2.0), rtol=1e-5)


def test_conditional_gradient_sparse_updates_only_touched_rows():
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    var = tf.Variable(w)
    values = np.ones((2, 3), np.float32)
    opt = optim.ConditionalGradient(learning_rate=0.5, lambda_=1.0)
    grad = tf.IndexedSlices(tf.constant(values), tf.constant([0, 2]), tf.constant([4, 3]))
    opt.apply_gradients([(grad, var)])
    expected = w.copy()
    expected[[0, 2]] = _tfa_reference(w[[0, 2]], values, 0.5, 1.0)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-6)


def _separable(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x @ np.linspace(-1.0, 1.0, 8) + 0.3 * x[:, 0] * x[:, 1] > 0).astype(np.float32)
    return x, y


def _small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(1, activation="sigmoid")])


def test_conditional_gradient_keeps_weights_in_the_ball_while_sgd_grows_and_still_learns():
    from sklearn.metrics import roc_auc_score

    x, y = _separable(4096, seed=1)
    x_val, y_val = _separable(2048, seed=2)
    lam = 3.0
    runs = {}
    for name, opt in {
        "cg": optim.build_optimizer(_train("train.optimizer=cg", "train.learning_rate=0.9",
                                           f"train.cg_lambda={lam}", "train.reduce_lr=false"), 64),
        "sgd": optim.build_optimizer(_train("train.optimizer=sgd", "train.momentum=0.9",
                                            "train.learning_rate=0.5"), 64),
    }.items():
        model = _small_model(seed=3)
        model.compile(optimizer=opt, loss="binary_crossentropy")
        norms = optim.WeightNormCallback()
        hist = model.fit(x, y, batch_size=64, epochs=12, verbose=0, callbacks=[norms])
        runs[name] = (norms, hist.history, roc_auc_score(y_val, model.predict(x_val, verbose=0)[:, 0]))

    cg_norms, cg_hist, cg_auc = runs["cg"]
    sgd_norms, _, sgd_auc = runs["sgd"]
    # FW iterates are convex combinations of w_0 and points of the λ-ball: per kernel
    # ‖w_t‖_F ≤ max(‖w_0‖_F, λ), at every epoch.
    for epoch in cg_norms.history:
        for key, value in epoch.items():
            if key != "total":
                assert value <= max(cg_norms.initial[key], lam) * (1 + 1e-5), (key, value)
    bound_total = np.sqrt(sum(max(v, lam) ** 2 for k, v in cg_norms.initial.items() if k != "total"))
    assert max(e["total"] for e in cg_norms.history) <= bound_total * (1 + 1e-5)
    # Same problem, same initial weights: SGD's norm grows (separable data → logits grow) past it.
    assert sgd_norms.initial["total"] == pytest.approx(cg_norms.initial["total"])
    assert sgd_norms.history[-1]["total"] > 2 * sgd_norms.initial["total"]
    assert sgd_norms.history[-1]["total"] > bound_total
    # The norms are in the Keras history (→ RUN/history.json), per layer and total.
    assert len(cg_hist["weight_norm"]) == 12
    assert cg_hist["weight_norm"][-1] == pytest.approx(cg_norms.history[-1]["total"])
    assert any(k.startswith("weight_norm/") for k in cg_hist)
    # Constrained, but it still learns (chance is 0.5).
    assert cg_auc > 0.85, cg_auc
    assert sgd_auc > 0.85, sgd_auc


def test_model_with_conditional_gradient_and_schedule_saves_and_loads(tmp_path):
    x, y = _separable(256, seed=4)
    opt = optim.build_optimizer(_train("train.optimizer=cg", "train.learning_rate=0.95", "train.cg_lambda=5",
                                       "train.schedule=piecewise", "train.reduce_lr=false",
                                       "train.schedule_boundaries=[4]",
                                       "train.schedule_values=[0.95,0.99]"), 4)
    model = _small_model(seed=5)
    model.compile(optimizer=opt, loss="binary_crossentropy")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, optim.ConditionalGradient)
    config = loaded.optimizer.get_config()
    assert config["lambda_"] == 5.0
    assert config["learning_rate"]["class_name"] == "PiecewiseConstantDecay"
    assert int(loaded.optimizer.iterations) == 4
    np.testing.assert_allclose(loaded.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0), rtol=1e-6)
    # Training continues with the restored optimizer (sees step 4 → rate 0.99).
    loaded.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.99)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipeline.training.optim import ConditionalGradient
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        var = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
        opt = ConditionalGradient(learning_rate=0.8, lambda_=2.0)
    grads = [tf.constant([[1.0, 0.0], [0.0, 0.0]]), tf.constant([[0.0, 0.0], [0.0, 3.0]])]

    @tf.function
    def step():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            g = tf.switch_case(ctx.replica_id_in_sync_group, [lambda: grads[0], lambda: grads[1]])
            opt.apply_gradients([(g, var)])
        strategy.run(replica_fn)

    step()
    values = [strategy.experimental_local_results(var)[i].numpy().tolist() for i in range(2)]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "values": values}))
""")


def test_conditional_gradient_under_mirrored_strategy_sees_the_all_reduced_gradient():
    # A fresh process: logical CPU devices must be configured before TensorFlow initialises.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    summed = np.array([[1.0, 0.0], [0.0, 3.0]])
    expected = _tfa_reference(np.array([[1.0, 2.0], [3.0, 4.0]]), summed, 0.8, 2.0)
    for replica_value in result["values"]:  # both mirrors hold the same, reduced update
        np.testing.assert_allclose(replica_value, expected, rtol=1e-5)


# --- the real distributed training path ------------------------------------------------------

_MWMS_TINY = ["model.blocks=1", "model.units=16", "model.dropout=0.0", "train.epochs=4",
              "train.batch_size_per_replica=128", "train.steps_per_execution=4", "train.shuffle_buffer=2000",
              "train.cache=false", "train.early_stopping_patience=5", "train.reduce_lr=false"]


def _glorot_uniform_bound(shape: tuple[int, ...]) -> float:
    """Largest possible Frobenius norm of a glorot-uniform kernel (|w| ≤ sqrt(6/(fan_in+fan_out)))."""
    fan_in, fan_out = int(np.prod(shape[:-1])), int(shape[-1])
    return float(np.sqrt(fan_in * fan_out * 6.0 / (fan_in + fan_out)))


@pytest.mark.slow
def test_two_worker_mwms_training_with_conditional_gradient_and_piecewise_schedule(small_dataset, tmp_path):
    """`higgs train --workers 2`: CG + a schedule on the real MWMS path (SGD/Nesterov/cosine: unit tests)."""
    from pipeline.data import dataset

    options = ["train.optimizer=cg", "train.learning_rate=0.9", "train.cg_lambda=1.0",
               "train.schedule=piecewise", "train.schedule_boundaries=[20]",
               "train.schedule_values=[0.9,0.95]"]

    run = tmp_path / "run"
    sets = [a for o in [*_MWMS_TINY, *options] for a in ("--set", o)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--data", small_dataset,
                          "--out", str(run), "--preset", "sample", "--workers", "2", *sets],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "[worker 1]" in out.stdout + out.stderr  # really two processes

    cfg = load_config("sample", overrides=[*_MWMS_TINY, *options])
    history = json.loads((run / "history.json").read_text())
    assert len(history["epoch"]) == 4
    assert max(history["val_auc"]) > 0.6, history["val_auc"]  # learns (chance 0.5)
    # Two replicas in sync: global batch 256, the schedule counts global steps.
    steps = dataset.split_rows(dataset.load_manifest(small_dataset), "training") // 256
    schedule = optim.build_schedule(cfg.train, steps)
    # history "lr" = the rate the epoch started with (the schedule one step before it).
    assert history["lr"][1] == pytest.approx(float(schedule(steps - 1)), rel=1e-4)
    assert history["lr"][0] == pytest.approx(0.9) and history["lr"][-1] == pytest.approx(0.95)

    model = keras.models.load_model(run / "model" / "model.keras")  # CG is a registered custom object
    assert isinstance(model.optimizer, optim.ConditionalGradient)
    assert model.optimizer.get_config()["learning_rate"]["class_name"] == "PiecewiseConstantDecay"
    assert int(model.optimizer.iterations) == 4 * steps
    # Conditional gradient: after t Frank–Wolfe steps with kept share ≤ r, every kernel obeys
    # ‖w_t‖ ≤ r^t·‖w_0‖ + (1 − r^t)·λ; ‖w_0‖ is bounded by the glorot-uniform initialiser.
    lam = cfg.train.cg_lambda
    kernels = {layer.name: layer.kernel.shape for layer in model.layers if hasattr(layer, "kernel")}
    assert kernels and all(f"weight_norm/{name}" in history for name in kernels)
    for epoch in range(4):
        t, r = steps * (epoch + 1), 0.95
        for name, shape in kernels.items():
            bound = r ** t * _glorot_uniform_bound(tuple(shape)) + (1 - r ** t) * lam
            assert history[f"weight_norm/{name}"][epoch] <= bound * (1 + 1e-5), (name, epoch, bound)
