"""ADORE (Zhan et al., SIGIR 2021, section 5): train the query encoder against a fixed document index.

The document tower and the index built from it stay fixed; only the query
tower trains. Every step, for a batch of training queries:

1. encode the queries with gradients, ``q`` ``(B, d)``;
2. search the index for each query's top-``K`` with ``q.detach()`` (the
   current query tower: these are the *dynamic* hard negatives);
3. mark the retrieved documents that are relevant (grade ≥ 1 in the training
   qrels); when *none* was retrieved, the query's relevant documents are
   appended after rank ``K`` at ranks ``K+1, K+2, …`` (as DRhard does,
   ``adore_positives=missing``), so every query with a positive in the corpus
   has pairs; ``adore_positives=always`` appends the unretrieved ones every time
   (on multi-positive data, e.g. NFCorpus, the many deep weakly-judged positives
   then drag the query vector away from the ones it already ranks);
4. recompute every candidate's score *with gradients* from the vectors the
   index ranks with (``index.reconstruct``: decoded codes for a PQ index, the
   original vectors for flat), ``s = scale · <q, v>``, so the ranks, the pair
   weights and the scores all agree;
5. loss: pairwise logistic loss over (relevant, retrieved non-relevant) pairs,
   each weighted by ``|ΔM|``, the change of the metric (``mrr@k`` or
   ``ndcg@k``) if the two swapped ranks (LambdaLoss); ``adore_loss=ranknet``
   sets every weight to 1 (the paper's ablation). ``adore_reduction=query``
   (DRhard) averages each query's pair losses, then the queries (those with a
   pair, over all ranks under torchrun); ``global`` averages over all pairs, so
   queries with many positives dominate.

Steps 3 and 5's pairs and weights, and the negative-selection rules on each step's lists, are
:mod:`hardneg.train.methods.adore_pairs`.

The index comes from :func:`hardneg.artifacts.corpus_index`, whose cache
key depends on the document side alone (:meth:`DualEncoder.side_identity`): ADORE on a
zero-shot model reuses the embeddings and index a ``hardneg
retrieve --model <same model>`` left in the cache. Dev is ranked in the same
index (:meth:`Adore.dev_index`, read by the one dev evaluation,
:mod:`hardneg.train.dev`), so training on a PQ index is evaluated on that PQ index.

``--index PATH`` (a Pyserini folder, a Faiss file or an embeddings ``.npy``; :mod:`.external`) trains against an
index hardneg did not build: no document tower, no tokenized corpus, and the saved model is the query encoder
alone, with the index's identity in ``adore.json``.

The saved model folder (an index hardneg built) holds the trained query tower (``query_tower/``), the
frozen document tower (root) and ``adore.json`` (document model, index kind and
folder, embeddings key, metric, K).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardneg.artifacts import corpus_index
from hardneg.devices import faiss_gpus, place_index
from hardneg.errors import HardnegError
from hardneg.index.faiss_index import FaissIndex, factory_string, gpu_kind_problem
from hardneg.io import read_json, write_json
from hardneg.model.fingerprints import weights_fingerprint
from hardneg.model.registry import resolve_model
from hardneg.negatives.diagnostics import Diagnostics
from hardneg.negatives.selection import selection_rng
from hardneg.train.distill import Distiller
from hardneg.train.losses import ideal_dcg, lambda_pairwise
from hardneg.train.methods import external_index
from hardneg.train.methods.adore_pairs import build_pairs, filter_ranked, retrieval_metrics
from hardneg.train.methods.base import Method, MethodContext, StepBatch
from hardneg.train.methods.external import check_encoder, open_index, vector_scores, write_card
from hardneg.train.methods.mining import TrainSelector
from hardneg.train.methods.settings import parse_adore_metric
from hardneg.train.steps import Laps, clock, encode_rows

logger = logging.getLogger("hardneg.train")

ADORE_FILE = "adore.json"


# ----------------------------------------------------------------------------- the document side
def doc_source(model_name: str, model) -> str:
    """The name the document tower is known by: ``model_name``, or the document model an ADORE
    output at ``model_name`` was trained on (when its document tower is unchanged)."""
    try:
        info_file = resolve_model(model_name) / ADORE_FILE
    except Exception:  # a model passed in directly, not by name
        return model_name
    if info_file.is_file():
        info = read_json(info_file)
        if info.get("doc_weights") == weights_fingerprint(model.doc_model) and info.get("doc_model"):
            return str(info["doc_model"])
    return model_name


def check_gpu_index(cfg, device: torch.device, dim: int, n_docs: int) -> None:
    """Refuse, before the corpus is encoded, an ADORE run on CUDA whose ``--index`` (with ``--index-fp16``)
    GPU Faiss cannot search (:func:`~hardneg.index.faiss_index.gpu_kind_problem`: Faiss's limit and what to
    use instead), or ``--index-fp16`` with a CPU-only Faiss. On the CPU ``--index-fp16`` is said to do nothing."""
    if device.type != "cuda":
        if cfg.index_fp16:
            logger.warning("adore: --index-fp16 stores a flat index in float16 on the GPU; on %s it does nothing",
                           device)
        return
    if faiss_gpus() == 0:
        if cfg.index_fp16:
            raise HardnegError("--index-fp16: the installed Faiss has no GPU support (faiss-cpu); pip install "
                               "faiss-gpu-cu12, or leave the flag out")
        return  # searched on the CPU (the trainer says so once)
    problem = gpu_kind_problem(cfg.index, dim, n_docs, fp16=cfg.index_fp16)
    if problem:
        raise HardnegError(f"--index {cfg.index}: ADORE searches its index on {device} every step, but {problem}")


# ----------------------------------------------------------------------------- the method
class Adore(Method):
    """ADORE: a frozen document tower and index; the query tower learns from its own top-K each step."""

    name = "adore"
    #: running total of the reconstruction time inside :meth:`scores` (a step logs its share as t_reconstruct)
    _reconstruct_seconds = 0.0

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        cfg = self.config
        self.metric_name, self.metric_k = parse_adore_metric(cfg.metric)
        self.k = int(cfg.adore_topk)
        model = ctx.model
        n_docs = len(ctx.doc_ids)
        if self.k > n_docs:
            raise HardnegError(f"adore_topk {self.k} is larger than the corpus ({n_docs} documents)")
        self.external = external_index(cfg)  # an index hardneg did not build: no document tower (issue 29)
        if self.external:
            self.doc_source = self.doc_weights = self.embeddings_key = self.embeddings_folder = None
            self.index = open_index(ctx)
            self.index_folder = self.index.folder
        else:
            self._own_index(ctx)
        self.place_index(model.device)
        # --nprobe / --ef-search: refused (HardnegError naming the flag) when the index kind has no such parameter
        self.index.set_search_params(nprobe=cfg.nprobe, ef_search=cfg.ef_search)
        row_of = {d: i for i, d in enumerate(self.index.ids)}
        # per training query: index rows of its relevant documents -> grade (sorted rows), counts, IDCG@k
        self.relevant: dict[str, dict[int, int]] = {}
        self.n_relevant: dict[str, int] = {}
        self.idcg: dict[str, float] = {}
        for q, docs in ctx.train_qrels.items():
            self.relevant[q] = dict(sorted((row_of[d], int(g)) for d, g in docs.items() if g >= 1 and d in row_of))
            self.n_relevant[q] = sum(1 for g in docs.values() if g >= 1)
            if self.metric_name == "ndcg":
                self.idcg[q] = ideal_dcg([int(g) for g in docs.values()], self.metric_k)
        logger.info("adore: %s index of %d documents (%s), metric %s, top-%d", cfg.index, len(self.index),
                    self.index_folder, cfg.metric, self.k)
        # negative-selection rules applied to every step's top-K (filter_ranked); inactive by default
        self.selector = TrainSelector(ctx)
        self.rules = self.selector.rules
        self.diagnostics = Diagnostics(self.rules, "adore steps (totals since this process started)")
        self._step = 0
        self.distiller: Distiller | None = None  # --distill: an added term over each step's pairs
        if cfg.distill != "none":
            self.distiller = Distiller(cfg, self.selector, ctx.positives, ctx.doc_ids)
        # the start query encoder against an external index: near-random retrieval stops here (--index-check)
        self.encoder_check = check_encoder(ctx, self.index, self.relevant) if self.external else None

    def _own_index(self, ctx: MethodContext) -> None:
        """The index hardneg builds (or reuses from its cache) of the corpus under the frozen document tower."""
        cfg, model, n_docs = self.config, ctx.model, len(ctx.doc_ids)
        factory_string(cfg.index, model.dim, n_docs)  # a bad index kind fails before encoding the corpus
        check_gpu_index(cfg, model.device, model.dim, n_docs)  # so does a kind the GPU cannot search
        self.doc_source = doc_source(cfg.model, model)
        self.doc_weights = weights_fingerprint(model.doc_model)
        try:  # cached by the document side alone (DualEncoder.side_identity), so X's cache is reused
            # under torchrun every rank encodes its share of the corpus; the index is built once (one rank, while
            # the others wait on its lock, not in a collective) and every rank loads it
            self.index = corpus_index(model, ctx.dataset, cfg.index, ctx.cache_dir, batch_size=cfg.batch_encode_size,
                                      show_progress=not cfg.quiet, over_ranks=True, precision=cfg.precision)
        except RuntimeError as exc:  # Faiss, e.g. fewer documents than a PQ codebook's 256 centroids
            raise HardnegError(f"could not build the {cfg.index} index of {n_docs} documents: {exc}") from exc
        source = self.index.manifest.get("source", {})
        self.embeddings_key = source.get("key")
        self.embeddings_folder = source.get("embeddings")
        self.index_folder = self.index.folder

    def place_index(self, device: torch.device) -> None:
        """Search on GPU Faiss when the encoder is on CUDA and the installed Faiss has GPUs: under torchrun each
        rank's copy on its own GPU, in one process on every GPU (:func:`hardneg.devices.place_index`, which
        warns when an index kind has no GPU version); a flat index stored in float16 with ``--index-fp16``
        (then a failed move is an error, not a warning); ``reconstruct`` keeps reading the CPU index."""
        place_index(self.index, device, fp16=self.config.index_fp16, required=self.config.index_fp16)

    # data ----------------------------------------------------------------------
    def train_examples(self, examples: list) -> list:
        """One example per training query (DRhard iterates queries, not (query, positive) pairs)."""
        first: dict[str, object] = {}
        for e in examples:
            first.setdefault(e.qid, e)
        out = [first[q] for q in sorted(first)]
        dropped = len(self.ctx.train_qrels) - len(out)
        if dropped:
            logger.info("adore: %d training queries have no relevant document in the corpus; skipped", dropped)
        if self.config.batch_size > len(out):
            raise HardnegError(
                f"batch size {self.config.batch_size} is larger than the {len(out)} training queries; "
                "lower --batch-size"
            )
        return out

    # loss ----------------------------------------------------------------------
    def batch_loss(self, batch: StepBatch) -> tuple[torch.Tensor, dict]:
        ctx, cfg = self.ctx, self.config
        examples = batch.examples
        qids = [e.qid for e in examples]
        # the step's time split (logged as t_*): query forward, search, rules, reconstruction, weights + loss
        laps = Laps(ctx.model.device)
        # autocast around the query encoder only: q is fp32, so the scores and the loss are fp32
        q = encode_rows(ctx.model, [ctx.query_tokens[x] for x in qids], "query", cfg.train_chunk, cfg.precision)
        laps.lap("t_query_encode")
        found_scores, retrieved = self.index.search(q.detach().float().cpu().numpy(), self.k)
        laps.lap("t_search")
        rule_parts: dict[str, float] = {}
        if self.rules.active:
            retrieved, rule_parts = self.apply_rules(q.detach().float().cpu().numpy(), qids, retrieved,
                                                     found_scores)
            laps.lap("t_negatives")
        pairs = build_pairs(retrieved, [self.relevant.get(x, {}) for x in qids], cfg.metric,
                            idcg=[self.idcg.get(x, 0.0) for x in qids] if self.metric_name == "ndcg" else None,
                            weighting=cfg.adore_loss, positives=cfg.adore_positives)
        reconstructed = self._reconstruct_seconds
        s_pos, s_neg = self.scores(q, pairs.pos_rows, pairs.neg_rows)
        device = q.device
        # lambda_pairwise as a mean over the global batch's pairs or queries (adore_reduction; under
        # torchrun each rank searches the replicated index with its own queries and the count is summed
        # over ranks)
        loss = lambda_pairwise(s_pos, s_neg, pairs.weights.to(device), pairs.mask.to(device),
                               reduction=cfg.adore_reduction)
        distill_parts: dict[str, float] = {}
        if self.distiller is not None:  # L_lambda + W · L_distill over the same pairs (hardneg.train.distill)
            ids = self.index.ids
            distill = self.distiller.loss(
                s_pos, s_neg, [[ids[r] for r in row] for row in pairs.pos_rows.tolist()],
                [[ids[r] for r in row] for row in pairs.neg_rows.tolist()], qids,
                torch.from_numpy(pairs.pos_valid).to(device), torch.from_numpy(pairs.neg_valid).to(device))
            distill_parts = {"rank_loss": float(loss.detach()), "distill": float(distill.detach())}
            loss = loss + self.distiller.weight * distill
        laps.lap("t_loss")
        t_reconstruct = self._reconstruct_seconds - reconstructed  # timed inside scores()
        laps.seconds["t_loss"] -= t_reconstruct
        laps.seconds["t_reconstruct"] = t_reconstruct
        parts = {"pairs": float(pairs.n_pairs), "skipped_queries": float(pairs.skipped),
                 **retrieval_metrics(pairs.relevant_retrieved, [self.n_relevant.get(x, 0) for x in qids]),
                 **rule_parts, **distill_parts, **laps.seconds}
        return loss, parts

    def apply_rules(self, qv: np.ndarray, qids: list[str], retrieved: np.ndarray,
                    scores: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """This step's lists with the rule-failing documents dropped (:func:`filter_ranked`), and the
        step's log values: candidates and removals per rule. Scores: the teacher's when given, else the
        current query tower's ``<q, v>`` (unscaled, the index's); positives scored the same way."""
        relevant = [self.relevant.get(x, {}) for x in qids]
        teacher = self.selector.teacher
        if teacher is not None:
            ids = self.index.ids
            requests = {x: [ids[r] for r in row if r >= 0] + [ids[r] for r in rel]
                        for x, row, rel in zip(qids, retrieved, relevant, strict=True)}
            got = teacher.scores(requests, self.selector.query_text(), self.selector.doc_text)
            scores = np.full(retrieved.shape, -np.inf)
            pos_scores = []
            for i, x in enumerate(qids):
                n_found = int((retrieved[i] >= 0).sum())
                found = np.flatnonzero(retrieved[i] >= 0)
                scores[i, found] = got[x][:n_found]
                pos_scores.append(got[x][n_found:].tolist())
        else:
            pos_scores = [vector_scores(qv[i], self.index.reconstruct(np.fromiter(rel, dtype=np.int64, count=len(rel))),
                                        self.index.l2).tolist() if rel else [] for i, rel in enumerate(relevant)]
        rngs = ([selection_rng(self.config.seed, self._step, x) for x in qids]
                if self.rules.sampled else None)
        step_diag = Diagnostics(self.rules, "adore step")
        out = filter_ranked(retrieved, scores, relevant, pos_scores, self.rules, rngs=rngs, diagnostics=step_diag,
                            qids=qids)
        for key in ("queries", "candidates", "kept"):
            setattr(self.diagnostics, key, getattr(self.diagnostics, key) + getattr(step_diag, key))
        for rule, v in step_diag.removed.items():
            self.diagnostics.removed[rule] += v
        for key, v in step_diag.scores.items():
            self.diagnostics.scores[key].extend(v)
        self.diagnostics.no_positive_score += step_diag.no_positive_score
        return out, step_diag.step_record()

    def after_step(self, step: int) -> dict[str, Any] | None:
        self._step = step
        if self.rules.active and (step % self.config.save_every == 0 or step >= self.config.max_steps):
            self.selector.write([self.diagnostics])
        return None

    def restore(self, checkpoint: Path) -> None:
        name = Path(checkpoint).name  # step-0000050: random sampling is keyed by the step (exact resume)
        if name.startswith("step-") and name[5:].isdigit():
            self._step = int(name[5:])

    def scores(self, q: torch.Tensor, pos_rows: np.ndarray, neg_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``scale · <q, v>`` (``−scale · ‖q−v‖²`` for an L2 index) with gradients, ``v`` = the vectors the index
        ranks with."""
        scale = self.ctx.scale
        tic = clock(q.device)
        v_pos = torch.from_numpy(self.index.reconstruct(pos_rows)).to(q.device, q.dtype)
        v_neg = torch.from_numpy(self.index.reconstruct(neg_rows)).to(q.device, q.dtype)
        self._reconstruct_seconds += clock(q.device) - tic  # the step's t_reconstruct
        l2 = self.index.l2  # an external L2 index: -||q - v||^2, with gradients
        return scale * vector_scores(q, v_pos, l2), scale * vector_scores(q, v_neg, l2)

    # dev -----------------------------------------------------------------------
    def dev_index(self) -> FaissIndex:
        """Dev is ranked in the fixed index (the whole corpus, as the steps search it)."""
        return self.index

    # output --------------------------------------------------------------------
    def info(self) -> dict:
        if self.external:
            return self._external_info()
        return {
            "method": self.name,
            "doc_model": self.doc_source,
            "doc_weights": self.doc_weights,
            "index_kind": self.config.index,
            "index": str(self.index_folder),
            "embeddings": self.embeddings_folder,
            "embeddings_key": self.embeddings_key,
            "metric": self.config.metric,
            "topk": self.k,
            "loss": self.config.adore_loss,
            "positives": self.config.adore_positives,
            "reduction": self.config.adore_reduction,
            **({"index_fp16": True} if self.config.index_fp16 else {}),
            "score_scale": self.ctx.scale,
            **({"search": params} if (params := self.index.search_params()) else {}),
        }

    def _external_info(self) -> dict:
        """``adore.json`` of a query encoder trained against an external index: that index's identity."""
        cfg = self.config
        return {"method": self.name, "start_model": cfg.model, "query_encoder_only": True,
                "external_index": self.index.manifest["external"], "index_check": self.encoder_check,
                "metric": cfg.metric, "topk": self.k, "loss": cfg.adore_loss, "positives": cfg.adore_positives,
                "reduction": cfg.adore_reduction, "score_scale": self.ctx.scale,
                **({"search": params} if (params := self.index.search_params()) else {})}

    def after_save(self, folder: Path) -> None:
        info = self.info()
        write_json(Path(folder) / ADORE_FILE, info)
        if self.external:  # the model card names the index the query encoder belongs to
            write_card(Path(folder), info)
