"""Issue 10: theorem bounds are labelled by whether the width condition holds,
noisy identity nets are outside every theorem, and an ensemble's divergence
message uses the wording of a single run's (train._lr_verdict)."""
import numpy as np
import pytest

import engine
from engine import theory


@pytest.fixture(scope="module")
def hxp():
    return engine.Problem(*engine.synthetic(1024, 16, 10, seed=0))


# orthogonal, m = 16 < d_x = 1024 (outside HXP Thm 3.1): at HXP's rate seeds 0, 1, 2
# diverge at steps 2, 9, 26 although the rate is the theorem's bound (theory.lr_bound docstring)
NARROW = [1024, 16, 16, 16, 10]


def test_width_note_met_and_not_met():
    prob = engine.Problem(*engine.synthetic(8, 6, 2, seed=0))
    narrow = engine.init.gaussian([8, 16, 16, 2], seed=0)
    req = theory.width_requirement(narrow, prob)
    assert theory.width_note(narrow, prob) == f"(width condition NOT met: m = 16 < required {req:.4g})"
    m = int(np.ceil(theory.width_requirement("orthogonal", prob, 2, C=1e-4)))
    wide = engine.init.orthogonal([8, m, 2], seed=0)
    assert theory.width_note(wide, prob, C=1e-4) == "(width condition met)"
    assert theory.width_note(engine.init.from_weights(wide.weights(), wide.alpha), prob) == "(no theorem applies)"
    # the (Setting, widths) form of an ensemble member agrees with the network's
    st = theory.theorem_setting(narrow)
    assert theory.width_note((st, narrow.widths), prob) == theory.width_note(narrow, prob)
    with pytest.raises(ValueError, match="net"):
        theory.width_condition_met((st, [8, 16, 2]), prob)


def test_summary_says_not_met_with_the_requirement():
    prob = engine.Problem(*engine.synthetic(8, 6, 2, seed=0))
    net = engine.init.gaussian([8, 16, 16, 2], seed=0)
    text = str(theory.summary(net, prob))
    row = [ln for ln in text.splitlines() if ln.startswith("width condition")][0]
    req = theory.width_requirement(net, prob)
    assert "NOT met" in row and f"m = 16 < required {req:.4g}" in row
    assert "not checked" in str(theory.summary("gaussian", prob, depth=3))


def test_noisy_identity_refuses_theory_lr():
    prob = engine.Problem(*engine.synthetic(8, 6, 2, seed=0))
    noisy = engine.init.identity([8, 16, 16, 2], noise=0.1, seed=1)
    assert noisy.init == theory.NOISY_IDENTITY
    assert not theory.theorem_setting(noisy).applies
    with pytest.raises(ValueError, match="noise"):
        engine.train(noisy, prob, lr="theory", steps=2)
    run = engine.train(noisy, prob, lr=1e-3, steps=2)          # a numeric lr runs, no factor claimed
    assert np.isnan(run.predicted)
    # the refusal survives a copy (the init name carries it)
    with pytest.raises(ValueError, match="noise"):
        theory.lr_bound(noisy.copy(), prob)
    clean = engine.init.identity([8, 16, 16, 2], seed=1)
    assert clean.init == "identity" and theory.theorem_setting(clean).applies


def test_ensemble_divergence_message_matches_single_run(hxp):
    ens = engine.init.orthogonal(NARROW, seed=0, ensemble=3)
    res = engine.train(ens, hxp, lr="theory", steps=40, backend="numpy")
    assert res.diverged.all()
    single = []
    for s in range(3):
        with pytest.raises(engine.DivergenceError) as e:
            engine.train(engine.init.orthogonal(NARROW, seed=s), hxp, lr="theory", steps=40, backend="numpy")
        single.append(str(e.value))
    for k in range(3):
        msg = res.messages[k]
        assert "is too large" not in msg
        assert "within the theorem's bound" in msg and "does not meet the width condition" in msg
        verdict = single[k].split("; ", 1)[1].split(". The history")[0]
        assert verdict in msg
    # above the bound the member's message says by how much, as a single run's does
    bound = theory.lr_bound("orthogonal", hxp, 4)
    ens2 = engine.init.orthogonal(NARROW, seed=0, ensemble=1)
    with pytest.warns(engine.LearningRateWarning):
        res2 = engine.train(ens2, hxp, lr=30 * bound, steps=40, backend="numpy")
    assert res2.diverged[0] and "x the theorem's bound" in res2.messages[0]


def test_demo_printout_and_legend_mark_the_width_condition(tmp_path, capsys, monkeypatch):
    from engine import cli
    assert cli.main(["demo", "--width", "16", "--depth", "3", "--steps", "20", "--no-plot"]) == 0
    out = capsys.readouterr().out
    for init in ("gaussian", "orthogonal"):
        line = [ln for ln in out.splitlines() if ln.startswith(f"{init} theorem factor")][0]
        assert "(width condition NOT met: m = 16 < required" in line
    from engine import experiments as ex
    prob, rows = ex.demo(16, 3, 20)
    import matplotlib.pyplot as plt
    seen = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (seen.append(fig), real_close(fig)))
    ex.plot_demo(rows, str(tmp_path / "d.png"))
    labels = [t.get_text() for t in seen[-1].axes[0].get_legend().get_texts()]
    bounds = [lb for lb in labels if "theorem bound" in lb]
    assert bounds and all("(width condition NOT met: m = 16 < required" in lb for lb in bounds)


def test_phase_diagram_title_says_widths_are_outside_hxp():
    from engine import experiments as ex
    rows = [{"init": "orthogonal", "depth": 4, "width": w, "d_in": 1024} for w in (10, 80)]
    note = ex.outside_hxp_note(rows)
    assert "every orthogonal width < d_x = 1024" in note and "HXP Thm 3.1" in note
    assert ex.outside_hxp_note([{"init": "orthogonal", "depth": 4, "width": 2048, "d_in": 1024}]) == ""
