"""Training objectives: each loss against the paper's formulas, written as plain loops."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.utils._param_validation import InvalidParameterError

import con2
from con2 import (
    Con2Detector,
    Con2Objective,
    CSIObjective,
    FIRMObjective,
    NearestNeighborScorer,
    SimCLRObjective,
)
from con2.contexts import Rotate90, Rotate180, Rotate270, VerticalFlip
from con2.objectives import OBJECTIVES, objective_contexts, resolve_objective


def paper_l(z, i, j, tau):
    """l(x_i, x_j, X) of appendix B.1: -log exp(s_ij/tau) / sum_{k != i} exp(s_ik/tau)."""
    sims = [float(z[i] @ z[k]) / tau for k in range(len(z))]
    denominator = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
    return -math.log(math.exp(sims[j]) / denominator)


def paper_context_loss(z, contexts, tau):
    """L_Context of section 2.2: sum over anchors, 1/(2N-1) sum over same-context views."""
    total = 0.0
    for i in range(len(z)):
        same = [j for j in range(len(z)) if j != i and contexts[j] == contexts[i]]
        total += sum(paper_l(z, i, j, tau) for j in same) / len(same)
    return total


def paper_content_loss(z, instances, tau):
    """L_Content of section 2.2: over images k, 1/12 sum over i in Lambda(k), j in Lambda(k)-i."""
    total = 0.0
    for k in sorted(set(instances.tolist())):
        group = [i for i in range(len(z)) if instances[i] == k]
        pairs = [(i, j) for i, j in itertools.permutations(group, 2)]
        total += sum(paper_l(z, i, j, tau) for i, j in pairs) / len(pairs)
    return total


def labels(n_images, n_contexts):
    """Context and instance labels in make_views' order: draw, context, image."""
    contexts = torch.arange(n_contexts).repeat_interleave(n_images).repeat(2)
    instances = torch.arange(n_images).repeat(n_contexts).repeat(2)
    return contexts, instances


def unit_rows(n, dim=16, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=gen, dtype=dtype), dim=1)


@pytest.mark.parametrize("n_images", [1, 3, 5])
@pytest.mark.parametrize("n_contexts", [2, 3])
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_con2_loss_matches_paper_formulas_in_float64(n_images, n_contexts, tau, alpha):
    n_views = 2 * n_contexts * n_images
    z_phi = unit_rows(n_views, seed=n_images * 31 + n_contexts)
    z_psi = unit_rows(n_views, seed=n_images * 37 + n_contexts)
    contexts, instances = labels(n_images, n_contexts)

    # alpha_max 1 at progress alpha: the content weight is alpha
    got = Con2Objective(temperature=tau).loss(
        {"context": z_phi, "content": z_psi}, contexts, instances, progress=alpha
    )

    # The paper's sums are our means times constants: 2KN anchors for L_Context, and
    # N images, each averaging over its pairs, for L_Content.
    reference = paper_context_loss(z_phi, contexts, tau) / n_views + alpha * (
        paper_content_loss(z_psi, instances, tau) / n_images
    )
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(reference, rel=1e-12)


def test_the_content_weight_rises_with_progress_to_alpha_max():
    z = unit_rows(8)
    contexts, instances = labels(2, 2)
    objective = Con2Objective(alpha_max=0.5)
    terms = objective.terms({"context": z, "content": z}, contexts, instances)
    for progress in (0.0, 0.5, 1.0):
        found = objective.loss({"context": z, "content": z}, contexts, instances, progress)
        expected = terms["context"] + 0.5 * progress * terms["content"]
        assert float(found) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("objective", [Con2Objective(temperature=0.5),
                                       SimCLRObjective(temperature=0.5)])  # fmt: skip
def test_without_a_context_the_loss_is_instance_discrimination(objective):
    z = unit_rows(8)
    instances = torch.arange(4).repeat(2)
    assert list(objective.heads(8, 0)) == ["content"]
    loss = objective.loss({"content": z}, torch.zeros(8, dtype=torch.long), instances, 0.3)
    assert float(loss) == pytest.approx(paper_content_loss(z, instances, 0.5) / 4, rel=1e-12)


def test_con2_builds_phi_before_psi_only_with_a_context():
    assert list(Con2Objective().heads(8, 1)) == ["context", "content"]
    assert list(Con2Objective().heads(8, 0)) == ["content"]


def test_loss_is_float32_and_finite_for_bf16_inputs_with_small_temperature():
    z = F.normalize(torch.randn(64, 128), dim=1).bfloat16()
    contexts, instances = labels(16, 2)
    loss = Con2Objective(temperature=0.01).loss({"context": z, "content": z}, contexts,
                                                instances, 1.0)  # fmt: skip
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)


def test_gradients_reach_both_heads():
    z_phi = torch.randn(8, 6, requires_grad=True)
    z_psi = torch.randn(8, 6, requires_grad=True)
    contexts, instances = labels(2, 2)
    projections = {"context": F.normalize(z_phi, dim=1), "content": F.normalize(z_psi, dim=1)}
    Con2Objective().loss(projections, contexts, instances, 0.5).backward()
    assert z_phi.grad.abs().sum() > 0 and z_psi.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [Con2Objective, SimCLRObjective])
@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_objectives_refuse_a_non_positive_temperature(cls, temperature):
    with pytest.raises(InvalidParameterError, match="temperature"):
        cls(temperature=temperature).heads(8, 1)


def test_names_take_the_detector_settings_and_objects_carry_their_own():
    assert resolve_objective("con2", 0.5, 2.0).get_params() == {
        "temperature": 0.5, "alpha_max": 2.0, "outliers": None}  # fmt: skip
    assert resolve_objective("simclr", 0.5, 2.0).get_params() == {"temperature": 0.5}
    given = Con2Objective(temperature=0.1)
    resolved = resolve_objective(given)
    assert resolved is not given and resolved.get_params() == given.get_params()
    with pytest.raises(ValueError, match=r"temperature=0.5 configures objectives given by name"):
        resolve_objective(given, 0.5)
    with pytest.raises(ValueError, match=r"Unknown objective 'byol'.*\['con2', 'csi'"):
        resolve_objective("byol")
    with pytest.raises(TypeError, match="objective must be"):
        resolve_objective(object())


def test_simclr_with_a_context_is_refused_before_any_image_is_read(tiny):
    det = Con2Detector(**{**tiny, "objective": "simclr", "context": "vflip"})
    with pytest.raises(ValueError, match=r"has no context term.*context=None"):
        det.fit("no/such/folder")  # the folder is never looked at


def test_simclr_is_con2_without_a_context(digits, tiny, one_thread):
    params = {**tiny, "context": None, "random_state": 0}
    con2 = Con2Detector(**params).fit(digits[0]).score_samples(digits[1][:20])
    simclr = Con2Detector(**params, objective="simclr").fit(digits[0])
    assert isinstance(simclr.objective_, SimCLRObjective)
    assert list(simclr.encoder_.heads) == ["content"]
    assert simclr.score_samples(digits[1][:20]).tolist() == con2.tolist()


def test_every_registered_objective_trains_a_tiny_encoder_step():
    for name, cls in OBJECTIVES.items():
        objective = cls()
        mine = (VerticalFlip(),) if getattr(objective, "uses_contexts", True) else ()
        n_contexts = len(objective_contexts(objective, mine))
        heads = objective.heads(8, n_contexts)
        contexts, instances = labels(2, n_contexts + 1)
        h = torch.randn(len(contexts), 8)
        projections = {k: head(h) for k, head in heads.items()}
        loss = objective.loss(projections, contexts, instances, 0.5)
        loss.backward()
        assert loss.shape == () and torch.isfinite(loss), name
        assert all(p.grad is not None for head in heads.values() for p in head.parameters())


def loop_supcon(z, positive, tau):
    """Mean over anchors i of the mean over positives j of l(i, j): plain loops in float64."""
    total = 0.0
    for i in range(len(z)):
        partners = [j for j in range(len(z)) if j != i and positive(i, j)]
        total += sum(paper_l(z, i, j, tau) for j in partners) / len(partners)
    return total / len(z)


def loop_cross_entropy(logits, targets):
    """Mean over rows of -log softmax(logits)[target], written out."""
    total = 0.0
    for row, target in zip(logits.tolist(), targets.tolist(), strict=True):
        total += -row[target] + math.log(sum(math.exp(v) for v in row))
    return total / len(logits)


@pytest.mark.parametrize("n_images", [1, 2, 3])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_csi_loss_matches_a_float64_loop_reference(n_images, tau):
    contexts, instances = labels(n_images, 4)  # 4 rotations, 2 draws
    raw = unit_rows(len(contexts), seed=n_images) * 3.0  # unnormalised projections
    logits = unit_rows(len(contexts), dim=4, seed=n_images + 50) * 2.0
    objective = CSIObjective(temperature=tau, rotation_weight=0.7)
    got = objective.loss({"content": raw, "rotation": logits}, contexts, instances, 0.3)
    z = F.normalize(raw, dim=1)

    def same_image_same_rotation(i, j):
        return instances[i] == instances[j] and contexts[i] == contexts[j]

    expected = loop_supcon(z, same_image_same_rotation, tau)
    expected += 0.7 * loop_cross_entropy(logits, contexts)
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("n_images", [1, 2, 3])
@pytest.mark.parametrize("tau", [0.2, 0.7])
def test_firm_loss_matches_a_float64_loop_reference(n_images, tau):
    contexts, instances = labels(n_images, 4)
    z = unit_rows(len(contexts), seed=n_images + 7)
    got = FIRMObjective(temperature=tau).loss({"content": z}, contexts, instances, 0.0)

    def firm_positive(i, j):
        if contexts[i] == 0:  # a normal view: every other normal view
            return contexts[j] == 0
        return contexts[j] == contexts[i] and instances[j] == instances[i]  # its other draw

    assert float(got) == pytest.approx(loop_supcon(z, firm_positive, tau), rel=1e-10)


def con2_outlier_reference(z_phi, z_psi, contexts, instances, n_outliers, tau, weight):
    """Con2 with outliers, enumerated: an outlier view's one positive is its other draw."""
    first = int(contexts.max()) - n_outliers + 1
    outlier = [int(c) >= first for c in contexts]

    def same_view_pair(i, j):
        return contexts[i] == contexts[j] and instances[i] == instances[j]

    def context_positive(i, j):
        if outlier[i] or outlier[j]:
            return outlier[i] and same_view_pair(i, j)
        return contexts[i] == contexts[j]

    def content_positive(i, j):
        if outlier[i] or outlier[j]:
            return outlier[i] and same_view_pair(i, j)
        return instances[i] == instances[j]

    content = loop_supcon(z_psi, content_positive, tau)
    if z_phi is None:
        return content
    return loop_supcon(z_phi, context_positive, tau) + weight * content


@pytest.mark.parametrize("n_images", [1, 2, 3])
@pytest.mark.parametrize(("n_contexts", "n_outliers"), [(2, 2), (2, 1), (1, 2), (3, 1)])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_con2_with_outliers_matches_a_float64_loop_reference(n_images, n_contexts, n_outliers,
                                                              tau):  # fmt: skip
    """``n_contexts`` counts the image itself; the outliers' views come after them."""
    contexts, instances = labels(n_images, n_contexts + n_outliers)
    z_phi = unit_rows(len(contexts), seed=n_images + 11)
    z_psi = unit_rows(len(contexts), seed=n_images + 13)
    outliers = ["rot90", "rot270"][:n_outliers]
    objective = Con2Objective(temperature=tau, alpha_max=0.8, outliers=outliers)
    assert list(objective.heads(8, n_contexts - 1 + n_outliers)) == ["context", "content"]
    got = objective.loss({"context": z_phi, "content": z_psi}, contexts, instances, 0.5)
    expected = con2_outlier_reference(z_phi, z_psi, contexts, instances, n_outliers, tau, 0.4)
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-10)
    # without phi (a user's heads): the content term alone, with the same outliers
    alone = objective.loss({"content": z_psi}, contexts, instances, 0.5)
    reference = con2_outlier_reference(None, z_psi, contexts, instances, n_outliers, tau, 0)
    assert float(alone) == pytest.approx(reference, rel=1e-10, abs=1e-10)


def test_con2_outliers_are_its_transforms_and_an_unknown_one_is_refused(tiny):
    objective = Con2Objective(outliers=["rot90", Rotate270()])
    assert [type(t) for t in objective.transforms] == [Rotate90, Rotate270]
    assert objective_contexts(objective, (VerticalFlip(),))[1:] == objective.transforms
    assert Con2Objective().transforms == ()
    for outliers, context in (("rot180", VerticalFlip()), (["rot90"], Rotate90()),
                              ("vflip", Rotate180())):  # fmt: skip
        with pytest.raises(ValueError, match="as an outlier, which the contexts"):
            objective_contexts(Con2Objective(outliers=outliers), (context,))
    both = objective_contexts(Con2Objective(outliers="rot90"), (VerticalFlip(), Rotate180()))
    assert [type(c) for c in both] == [VerticalFlip, Rotate180, Rotate90]  # no outlier twin
    det = Con2Detector(**{**tiny, "context": "vflip"}, objective=Con2Objective(outliers="rot45"))
    with pytest.raises(ValueError, match="Unknown context 'rot45'"):
        det.fit("never/read")


@pytest.mark.parametrize(
    "objective",
    [Con2Objective(), Con2Objective(outliers=["rot90", "rot270"]), CSIObjective(), FIRMObjective()],
    ids=["con2", "con2-outliers", "csi", "firm"],
)
def test_anchor_shards_add_up_to_the_whole_loss(objective):
    """What several processes compute (each its anchors against all views) sums to one."""
    n_contexts = 2 + len(objective.transforms) if isinstance(objective, Con2Objective) else 4
    contexts, instances = labels(3, n_contexts)
    heads = objective.heads(8, n_contexts - 1)
    torch.manual_seed(0)
    h = torch.randn(len(contexts), 8, dtype=torch.float64)
    projections = {k: head.double()(h) for k, head in heads.items()}
    whole = objective.loss(projections, contexts, instances, 0.4)
    cut = len(contexts) // 3
    shards = [objective.loss(projections, contexts, instances, 0.4, anchors=part)
              for part in (slice(0, cut), slice(cut, len(contexts)))]  # fmt: skip
    assert float(sum(shards).detach()) == pytest.approx(float(whole.detach()), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Context check failed")  # vflip on 8x8 zeros
def test_con2_trains_with_rotations_as_outliers_beside_its_context(digits, tiny, tmp_path):
    objective = Con2Objective(outliers=["rot90", "rot270"])
    params = {**tiny, "context": "vflip", "n_test_augmentations": 8, "random_state": 0}
    det = Con2Detector(**params, objective=objective).fit(digits[0])
    assert [type(c).__name__ for c in det.contexts_] == ["VerticalFlip", "Rotate90", "Rotate270"]
    assert det.views_.view_contexts.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    scores = det.score_samples(digits[1])
    assert roc_auc_score(digits[2], scores) > 0.8
    det.save(tmp_path / "m.con2")  # built-in outliers travel by name
    loaded = con2.load(tmp_path / "m.con2")
    assert loaded.objective_.get_params()["outliers"] == ["rot90", "rot270"]
    np.testing.assert_array_equal(loaded.score_samples(digits[1]), scores)


def test_csi_and_firm_train_on_rotations_and_refuse_a_context(digits, tiny):
    params = {**tiny, "context": None, "n_test_augmentations": 8, "random_state": 0}
    csi = Con2Detector(**params, objective="csi", scorer="csi").fit(digits[0])
    assert [type(c).__name__ for c in csi.contexts_] == ["Rotate90", "Rotate180", "Rotate270"]
    assert csi.views_.view_contexts.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert np.isfinite(csi.score_samples(digits[1])).all()
    firm = Con2Detector(**params, objective="firm", scorer=NearestNeighborScorer(n_neighbors=5))
    firm.fit(digits[0])
    assert roc_auc_score(digits[2], firm.score_samples(digits[1])) > 0.8
    with pytest.raises(ValueError, match=r"has no context term.*context=None"):
        Con2Detector(**{**params, "context": "vflip"}, objective="csi").fit("never/read")
    with pytest.raises(ValueError, match=r"scores the heads \('content', 'rotation'\)"):
        Con2Detector(**params, scorer="csi").fit("never/read")  # con2 has no rotation head
