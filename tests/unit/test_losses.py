from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hardneg.errors import HardnegError
from hardneg.train.layout import collision_mask, inbatch_scores, layout_masks, star_scores
from hardneg.train.losses import (
    delta_mrr,
    delta_ndcg,
    ideal_dcg,
    lambda_pairwise,
    ranknet_pairwise,
    ranknet_pairwise_sum,
    softmax_ce,
    star_loss,
)


def sp(x: float) -> float:
    """log(1 + exp(x)), written out."""
    return math.log(1.0 + math.exp(x))


def t(values, dtype=torch.float64, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------- DRhard reference


def drhard_star_reference(
    q: torch.Tensor,
    D: torch.Tensor,
    H: torch.Tensor,
    pos_mask_DD: torch.Tensor,
    pos_mask_DH: torch.Tensor,
) -> torch.Tensor:
    """Literal transcription of DRhard's STAR loss (star/train.py, inbatch_train).

    ``pos_mask_DD[i, j]``: D's doc j is a known positive of query i (diagonal
    included); ``pos_mask_DH[i, j]``: H's doc j is a known positive of query i.
    """
    batch_size = q.shape[0]
    batch_scores = torch.matmul(q, D.T)
    single_positive_scores = torch.diagonal(batch_scores, 0)
    positive_scores = single_positive_scores.reshape(-1, 1).repeat(1, batch_size).reshape(-1)
    rel_pair_mask = 1 - pos_mask_DD.to(batch_scores.dtype)
    batch_scores = batch_scores.reshape(-1)
    logit_matrix = torch.cat([positive_scores.unsqueeze(1), batch_scores.unsqueeze(1)], dim=1)
    lsm = F.log_softmax(logit_matrix, dim=1)
    loss = -1.0 * lsm[:, 0] * rel_pair_mask.reshape(-1)
    first_loss, first_num = loss.sum(), rel_pair_mask.sum()

    other_doc_num = H.shape[0]
    other_batch_scores = torch.matmul(q, H.T)
    other_batch_scores = other_batch_scores.reshape(-1)
    positive_scores = single_positive_scores.reshape(-1, 1).repeat(1, other_doc_num).reshape(-1)
    other_logit_matrix = torch.cat(
        [positive_scores.unsqueeze(1), other_batch_scores.unsqueeze(1)], dim=1
    )
    other_lsm = F.log_softmax(other_logit_matrix, dim=1)
    other_loss = -1.0 * other_lsm[:, 0]
    hard_pair_mask = (1 - pos_mask_DH.to(other_loss.dtype)).reshape(-1)
    other_loss = other_loss * hard_pair_mask
    second_loss, second_num = other_loss.sum(), hard_pair_mask.sum()
    return (first_loss + second_loss) / (first_num + second_num)


def _star_batch(seed: int, b: int = 6, h: int = 1, dim: int = 8, collide: bool = True):
    """A random batch with doc ids; the same id always has the same embedding."""
    g = torch.Generator().manual_seed(seed)
    n_docs = 40
    table = torch.randn(n_docs, dim, generator=g, dtype=torch.float64)
    q = torch.randn(b, dim, generator=g, dtype=torch.float64)
    pos_ids = [f"d{i}" for i in range(b)]
    hard_ids = [[f"d{b + i * h + j}" for j in range(h)] for i in range(b)]
    positives = [{pos_ids[i]} for i in range(b)]
    if collide:
        pos_ids[1] = pos_ids[0]  # two queries share a positive
        positives[1] = {pos_ids[1]}
        hard_ids[2][0] = pos_ids[3]  # query 2's hard negative is query 3's positive
        positives[4].add(hard_ids[5][0])  # query 5's hard negative is a positive of query 4
        positives[4].add(pos_ids[2])  # query 2's positive is also a positive of query 4
        hard_ids[3][-1] = hard_ids[0][0]  # a hard negative shared by two queries
    flat_hard = [d for ids in hard_ids for d in ids]

    def emb(ids: list[str]) -> torch.Tensor:
        return table[[int(d[1:]) for d in ids]]

    pos_mask_dd = torch.tensor([[d in positives[i] for d in pos_ids] for i in range(b)])
    pos_mask_dh = torch.tensor([[d in positives[i] for d in flat_hard] for i in range(b)])
    return q, emb(pos_ids), emb(flat_hard), pos_ids, hard_ids, positives, pos_mask_dd, pos_mask_dh


# --------------------------------------------------------------------------- RankNet


def test_ranknet_hand_computed_with_mask() -> None:
    pos = t([2.0, 0.5])
    neg = t([[1.0, 3.0], [0.0, 0.5]])
    mask = torch.tensor([[True, True], [True, False]])
    expected = (sp(1.0 - 2.0) + sp(3.0 - 2.0) + sp(0.0 - 0.5)) / 3
    assert ranknet_pairwise(pos, neg, mask).item() == pytest.approx(expected, abs=1e-12)
    total, count = ranknet_pairwise_sum(pos, neg, mask)
    assert count.item() == 3
    assert total.item() == pytest.approx(expected * 3, abs=1e-12)


def test_ranknet_without_mask_uses_all_pairs() -> None:
    pos = t([2.0, 0.5])
    neg = t([[1.0, 3.0], [0.0, 0.5]])
    expected = (sp(-1.0) + sp(1.0) + sp(-0.5) + math.log(2.0)) / 4
    assert ranknet_pairwise(pos, neg).item() == pytest.approx(expected, abs=1e-12)


def test_ranknet_is_stable_for_large_scores() -> None:
    pos = t([0.0])
    neg = t([[1000.0, -1000.0]])
    assert ranknet_pairwise(pos, neg).item() == pytest.approx(500.0, abs=1e-9)


def test_masked_scores_do_not_matter_and_get_zero_gradient() -> None:
    mask = torch.tensor([[True, False, True], [False, True, False]])
    base = [[0.3, 0.9, -0.2], [1.5, 0.1, 0.7]]
    losses = []
    for masked_value in (0.9, 50.0, float("inf"), float("nan")):
        values = [row[:] for row in base]
        values[0][1] = masked_value
        values[1][0] = -masked_value
        values[1][2] = masked_value
        pos = t([0.4, 0.2], grad=True)
        neg = t(values, grad=True)
        loss = ranknet_pairwise(pos, neg, mask)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.all(neg.grad[~mask] == 0)
        assert torch.all(neg.grad[mask] != 0)
        losses.append(loss.item())
    assert losses == [losses[0]] * len(losses)


def test_no_valid_pair_is_zero_not_nan() -> None:
    pos = t([0.4, 0.2], grad=True)
    neg = t([[1.0, 2.0], [3.0, 4.0]], grad=True)
    none = torch.zeros(2, 2, dtype=torch.bool)
    for loss in (
        ranknet_pairwise(pos, neg, none),
        softmax_ce(pos, neg, none),
        star_loss(pos, neg, neg, none, none),
        star_loss(pos, neg, neg, none, none, mixing="pairmean"),
        lambda_pairwise(pos[:, None], neg, torch.ones(2, 1, 2), none[:, None, :]),
    ):
        assert loss.item() == 0.0
        assert loss.requires_grad
        pos.grad = neg.grad = None
        loss.backward()
        assert torch.all(neg.grad == 0) and torch.all(pos.grad == 0)
    # Zero negatives at all behaves the same way.
    assert ranknet_pairwise(pos, torch.zeros(2, 0, dtype=torch.float64)).item() == 0.0


def test_shape_errors() -> None:
    with pytest.raises(HardnegError):
        ranknet_pairwise(t([1.0, 2.0]), t([[1.0]]))
    with pytest.raises(HardnegError):
        ranknet_pairwise(t([1.0]), t([[1.0, 2.0]]), torch.tensor([[True]]))
    with pytest.raises(HardnegError):
        ranknet_pairwise(t([1.0]), t([[1.0]]), torch.tensor([[1]]))


# --------------------------------------------------------------------------- softmax CE


def test_softmax_ce_hand_computed() -> None:
    pos = t([1.0, 0.0])
    neg = t([[0.0, 2.0], [1.0, -1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    tau = 0.5
    q1 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    q2 = -math.log(math.exp(0.0) / (math.exp(0.0) + math.exp(2.0) + math.exp(-2.0)))
    assert softmax_ce(pos, neg, mask, temperature=tau).item() == pytest.approx(
        (q1 + q2) / 2, abs=1e-12
    )
    manual = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros(2, dtype=torch.long))
    assert softmax_ce(pos, neg).item() == pytest.approx(manual.item(), abs=1e-12)


def test_softmax_ce_masked_gradient_is_zero() -> None:
    pos = t([1.0, 0.0], grad=True)
    neg = t([[0.0, 2.0], [1.0, -1.0]], grad=True)
    mask = torch.tensor([[True, False], [False, True]])
    softmax_ce(pos, neg, mask).backward()
    assert torch.all(neg.grad[~mask] == 0) and torch.all(neg.grad[mask] != 0)


def test_softmax_ce_rejects_bad_temperature() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(HardnegError):
            softmax_ce(t([1.0]), t([[0.0]]), temperature=bad)


# --------------------------------------------------------------------------- Lambda weights


def test_delta_mrr_hand_computed() -> None:
    rank_pos = torch.tensor([1, 3, 5, 12, 4, 2])
    rank_neg = torch.tensor([2, 11, 5, 15, 4, 10])
    got = delta_mrr(rank_pos, rank_neg, k=10)
    expected = [0.5, 1 / 3, 0.0, 0.0, 0.0, 1 / 2 - 1 / 10]
    assert got.tolist() == pytest.approx(expected, abs=1e-7)
    # rank exactly k counts, k + 1 does not
    assert delta_mrr(torch.tensor([10]), torch.tensor([11]), k=10).item() == pytest.approx(0.1)


def test_delta_mrr_broadcasts() -> None:
    got = delta_mrr(torch.tensor([[1], [2]]), torch.tensor([[1, 2, 4]]), k=3)
    assert got.shape == (2, 3)
    expected = [[0.0, 0.5, 1.0], [0.5, 0.0, 0.5]]
    assert got.tolist() == [pytest.approx(row) for row in expected]


@pytest.mark.parametrize("bad_k", [None, 0, -3, 2.5, True, "10"])
def test_bad_k_raises(bad_k) -> None:
    r = torch.tensor([1])
    with pytest.raises(HardnegError, match="k must be a positive integer"):
        delta_mrr(r, r, k=bad_k)
    with pytest.raises(HardnegError, match="k must be a positive integer"):
        delta_ndcg(r, r, r, r, 1.0, k=bad_k)
    with pytest.raises(HardnegError, match="k must be a positive integer"):
        ideal_dcg([1], k=bad_k)


def test_bad_ranks_raise() -> None:
    with pytest.raises(HardnegError):
        delta_mrr(torch.tensor([0]), torch.tensor([1]), k=10)
    with pytest.raises(HardnegError):
        delta_mrr(torch.tensor([1.0]), torch.tensor([1]), k=10)


def test_ideal_dcg_hand_computed() -> None:
    assert ideal_dcg([0, 2, 1, 3], k=2) == pytest.approx(7.0 + 3.0 / math.log2(3))
    assert ideal_dcg(torch.tensor([1, 1]), k=10) == pytest.approx(1.0 + 1.0 / math.log2(3))
    assert ideal_dcg([-1, 1], k=5) == pytest.approx(1.0)
    assert ideal_dcg([], k=5) == 0.0
    assert ideal_dcg([0, 0], k=5) == 0.0


def test_delta_ndcg_hand_computed() -> None:
    idcg = ideal_dcg([2, 1, 0, 0], k=3)
    assert idcg == pytest.approx(3.0 + 1.0 / math.log2(3))
    rank_pos = torch.tensor([1, 1, 2, 4, 3, 2])
    rank_neg = torch.tensor([2, 5, 2, 6, 1, 3])
    grade_pos = torch.tensor([2, 2, 2, 1, 1, 1])
    grade_neg = torch.tensor([0, 0, 0, 0, 0, 1])
    got = delta_ndcg(rank_pos, rank_neg, grade_pos, grade_neg, idcg, k=3)
    expected = [
        3 * (1 - 1 / math.log2(3)) / idcg,  # swap ranks 1 and 2
        3 * 1.0 / idcg,  # negative beyond k: its discount is 0
        0.0,  # tie in rank
        0.0,  # both beyond k
        1 * abs(1 / 2 - 1) / idcg,  # positive below the negative
        0.0,  # same grade
    ]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    # Per-query IDCG broadcasts.
    two = delta_ndcg(
        torch.tensor([[1], [1]]), torch.tensor([[2], [2]]), 1, 0, torch.tensor([[1.0], [2.0]]), k=3
    )
    assert two.flatten().tolist() == pytest.approx(
        [1 - 1 / math.log2(3), (1 - 1 / math.log2(3)) / 2]
    )


def test_delta_ndcg_rejects_zero_idcg() -> None:
    r = torch.tensor([1])
    with pytest.raises(HardnegError, match="IDCG"):
        delta_ndcg(r, r + 1, r, r - 1, 0.0, k=3)


def test_lambda_pairwise_hand_computed() -> None:
    pos = t([[2.0, 1.0]])
    neg = t([[1.5, 0.0]], grad=True)
    weights = t([[[0.5, 0.25], [1.0, 2.0]]])
    mask = torch.tensor([[[True, True], [False, True]]])
    expected = (0.5 * sp(1.5 - 2.0) + 0.25 * sp(0.0 - 2.0) + 2.0 * sp(0.0 - 1.0)) / 3
    loss = lambda_pairwise(pos, neg, weights, mask)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    unmasked = (
        0.5 * sp(-0.5) + 0.25 * sp(-2.0) + 1.0 * sp(0.5) + 2.0 * sp(-1.0)
    ) / 4  # all four pairs
    assert lambda_pairwise(pos, neg, weights).item() == pytest.approx(unmasked, abs=1e-12)
    with pytest.raises(HardnegError):
        lambda_pairwise(pos, neg, weights[:, :1])


def test_lambda_pairwise_with_delta_mrr_weights() -> None:
    # One query; positive at rank 3, negatives at ranks 1, 2 and 20 (beyond k=10).
    pos = t([[0.5]])
    neg = t([[0.9, 0.7, -1.0]])
    w = delta_mrr(torch.tensor([[[3]]]), torch.tensor([[[1, 2, 20]]]), k=10)
    expected = ((1 - 1 / 3) * sp(0.4) + (1 / 2 - 1 / 3) * sp(0.2) + (1 / 3) * sp(-1.5)) / 3
    assert lambda_pairwise(pos, neg, w).item() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- score builders


def test_collision_mask() -> None:
    got = collision_mask([{"a", "x"}, {"b"}, set()], ["a", "b", "a", "c"])
    assert got.tolist() == [
        [True, False, True, False],
        [False, True, False, False],
        [False, False, False, False],
    ]
    assert got.dtype == torch.bool


def test_inbatch_scores_masks_own_positive_and_collisions() -> None:
    q = t([[1.0, 0.0], [0.0, 1.0]])
    docs = t([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    collisions = torch.tensor([[False, False, True], [False, False, False]])
    pos, neg, mask = inbatch_scores(q, docs, torch.tensor([0, 1]), collisions)
    assert pos.tolist() == [1.0, 4.0]
    assert neg.tolist() == [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]
    assert mask.tolist() == [[False, True, False], [True, False, True]]
    with pytest.raises(HardnegError):
        inbatch_scores(q, docs, torch.tensor([0, 3]))


# --------------------------------------------------------------------------- STAR


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("collide", [False, True])
def test_star_pairmean_equals_drhard_hand_arranged(seed: int, collide: bool) -> None:
    q, d, h, _pids, _hids, _positives, mdd, mdh = _star_batch(seed, collide=collide)
    b = q.shape[0]
    ref = drhard_star_reference(q, d, h, mdd, mdh)
    sdd, sdh = q @ d.T, q @ h.T
    eye = torch.eye(b, dtype=torch.bool)
    # hard = own hard negative (diagonal of q @ H.T)
    hard, hard_mask = sdh.diagonal()[:, None], ~mdh.diagonal()[:, None]
    # rand = other queries' positives + other queries' hard negatives (off-diagonals)
    off = ~eye
    rand = torch.cat([sdd[off].view(b, b - 1), sdh[off].view(b, b - 1)], dim=1)
    rand_mask = torch.cat([~mdd[off].view(b, b - 1), ~mdh[off].view(b, b - 1)], dim=1)
    got = star_loss(sdd.diagonal(), hard, rand, hard_mask, rand_mask, mixing="pairmean")
    assert abs(got.item() - ref.item()) <= 1e-6
    assert got.item() == pytest.approx(ref.item(), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("h", [1, 2])
def test_star_scores_pairmean_equals_drhard(seed: int, h: int) -> None:
    q, d, hd, pids, hids, positives, mdd, mdh = _star_batch(seed, h=h, collide=True)
    ref = drhard_star_reference(q, d, hd, mdd, mdh)
    b = q.shape[0]
    for hard_docs, hard_ids in ((hd, hids), (hd.view(b, h, -1), [x for r in hids for x in r])):
        s = star_scores(
            q,
            d,
            hard_docs,
            pos_doc_ids=pids,
            hard_doc_ids=hard_ids,
            query_positives=positives,
        )
        assert s.hard.shape == (b, h) and s.rand.shape == (b, b + b * h)
        got = s.loss(mixing="pairmean")
        assert got.item() == pytest.approx(ref.item(), abs=1e-12)
    # gradients agree too
    q1 = q.clone().requires_grad_(True)
    q2 = q.clone().requires_grad_(True)
    drhard_star_reference(q1, d, hd, mdd, mdh).backward()
    star_scores(q2, d, hd, pos_doc_ids=pids, hard_doc_ids=hids, query_positives=positives).loss(
        mixing="pairmean"
    ).backward()
    assert torch.allclose(q1.grad, q2.grad, atol=1e-12)


def test_star_scores_layout_and_masks() -> None:
    q, d, hd, pids, hids, positives, _mdd, _mdh = _star_batch(7, b=4, h=2, collide=False)
    s = star_scores(q, d, hd, pos_doc_ids=pids, hard_doc_ids=hids, query_positives=positives)
    assert s.rand_doc_ids == tuple(pids + [x for r in hids for x in r])
    assert torch.allclose(s.pos, (q * d).sum(1))
    assert torch.allclose(s.hard, torch.einsum("bd,bhd->bh", q, hd.view(4, 2, -1)))
    assert torch.allclose(s.rand, q @ torch.cat([d, hd]).T)
    assert s.hard_mask.all()
    # query i's own positive (col i) and own hard negatives (cols 4+2i, 4+2i+1) are masked
    for i in range(4):
        masked = {j for j in range(12) if not s.rand_mask[i, j]}
        assert masked == {i, 4 + 2 * i, 5 + 2 * i}


def test_star_scores_extra_random_docs() -> None:
    q, d, hd, pids, hids, positives, _mdd, _mdh = _star_batch(3, b=3, h=1, collide=False)
    extra = torch.randn(2, q.shape[1], dtype=torch.float64)
    positives[0] = positives[0] | {"r1"}  # the extra doc r1 is a positive of query 0
    s = star_scores(
        q,
        d,
        hd,
        pos_doc_ids=pids,
        hard_doc_ids=hids,
        query_positives=positives,
        rand_docs=extra,
        rand_doc_ids=["r0", "r1"],
    )
    assert s.rand.shape == (3, 3 + 3 + 2)
    assert s.rand_mask[:, -2:].tolist() == [[True, False], [True, True], [True, True]]
    assert torch.allclose(s.rand[:, -2:], q @ extra.T)
    with pytest.raises(HardnegError):
        star_scores(q, d, hd, pos_doc_ids=pids, hard_doc_ids=hids, query_positives=positives,
                    rand_docs=extra)  # fmt: skip


def test_star_alpha_mixing_is_ls_plus_alpha_lr() -> None:
    g = torch.Generator().manual_seed(11)
    pos = torch.randn(5, generator=g, dtype=torch.float64)
    hard = torch.randn(5, 3, generator=g, dtype=torch.float64)
    rand = torch.randn(5, 7, generator=g, dtype=torch.float64)
    hard_mask = torch.rand(5, 3, generator=g) > 0.3
    rand_mask = torch.rand(5, 7, generator=g) > 0.3
    for alpha in (0.0, 0.5, 1.0, 2.0):
        got = star_loss(pos, hard, rand, hard_mask, rand_mask, alpha=alpha, mixing="alpha")
        ls = ranknet_pairwise(pos, hard, hard_mask)
        lr = ranknet_pairwise(pos, rand, rand_mask)
        assert got.item() == pytest.approx((ls + alpha * lr).item(), abs=1e-12)
    # pairmean is one mean over the union of valid pairs
    sh, nh = ranknet_pairwise_sum(pos, hard, hard_mask)
    sr, nr = ranknet_pairwise_sum(pos, rand, rand_mask)
    pm = star_loss(pos, hard, rand, hard_mask, rand_mask, mixing="pairmean")
    assert pm.item() == pytest.approx(((sh + sr) / (nh + nr)).item(), abs=1e-12)


def test_star_loss_hand_computed() -> None:
    pos = t([1.0])
    hard = t([[2.0]])
    rand = t([[0.0, -1.0]])
    ls = sp(1.0)
    lr = (sp(-1.0) + sp(-2.0)) / 2
    assert star_loss(pos, hard, rand, alpha=0.5).item() == pytest.approx(ls + 0.5 * lr)
    assert star_loss(pos, hard, rand, mixing="pairmean").item() == pytest.approx(
        (sp(1.0) + sp(-1.0) + sp(-2.0)) / 3
    )


def test_star_loss_bad_arguments() -> None:
    with pytest.raises(HardnegError, match="mixing"):
        star_loss(t([1.0]), t([[0.0]]), t([[0.0]]), mixing="mean")  # type: ignore[arg-type]
    with pytest.raises(HardnegError, match="alpha"):
        star_loss(t([1.0]), t([[0.0]]), t([[0.0]]), alpha=-1.0)


def test_layout_masks_of_one_rank_of_a_global_batch() -> None:
    # global batch of 3 examples, 1 negative each; this rank scores example 1 and 2 (row_offset 1)
    docs = ["p0", "p1", "p2", "n0", "n1", "p0"]  # positives, negatives of 0, 1, 2 (n2 = p0: a collision)
    own, other = layout_masks([{"p1"}, {"p2", "p0"}], docs, 1, row_offset=1, global_batch=3)
    assert own.tolist() == [[False, False, False, False, True, False], [False] * 6]
    assert other.tolist() == [[True, False, True, True, False, True], [False, True, False, True, True, False]]
