"""The variational auto-encoder shared by CDVAE and DP-CDVAE.

Both models encode a crystal with a periodic DimeNet++ (:mod:`generators.models.dimenet_pbc`)
into a latent z (``fc_mu``/``fc_var``, KL weight β = 0.01), and decode from z with MLP heads
(hidden 256, one hidden layer). The encoder's graph (``model.encoder.graph``) is the papers'
CrystalNN bonding graph (``crystalnn``; computed once per crystal — a whole training split in
parallel by :meth:`CrystalVAE.fit_statistics` — and kept in the data cache,
:class:`~generators.data.cache.EncoderGraphStore`) or the 7 Å / 20-neighbour radius graph
(``radius``). The heads:

* the number of atoms (``max_atoms + 1`` classes, cross-entropy);
* the lattice: lengths / N^(1/3) and the three angles, standardised with a scaler fitted on the
  training split (:meth:`CrystalVAE.fit_statistics`, stored as buffers), MSE;
* the composition: a 100-way distribution per atom (cross-entropy per atom, mean per crystal).

They differ only in how coordinates are noised and denoised from z; a subclass implements
:meth:`CrystalVAE.denoising_loss` and :meth:`CrystalVAE.sample_structure`. What they share lives
here: the decoder construction (``model.decoder.type``, :func:`~generators.models.decoders.
build_decoder`), the type noise A = onehot + softmax(composition)·σ_type with multinomially drawn
noisy types (:meth:`CrystalVAE.noisy_atom_types`), the per-crystal means of the coordinate and
type losses with CE/σ_type (:meth:`CrystalVAE.denoising_terms`), the type-loss weight, and the
fitting of GemNet-T's scale factors on training data in :meth:`CrystalVAE.fit_statistics`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from generators.crystal import (
    MAX_ATOMIC_NUMBER,
    data_list_to_batch,
    lattice_from_scaled_features,
    scaled_lattice_features,
)
from generators.data.cache import EncoderGraphStore
from generators.data.locations import cache_dir
from generators.models.base import CrystalGenerator
from generators.models.decoders import build_decoder
from generators.models.dimenet_pbc import PeriodicDimeNetPP

ENCODER_DEFAULTS: dict[str, Any] = {
    "hidden_channels": 128,
    "num_blocks": 4,
    "int_emb_size": 64,
    "basis_emb_size": 8,
    "out_emb_channels": 256,
    "num_spherical": 7,
    "num_radial": 6,
    "cutoff": 7.0,
    "max_neighbors": 20,
    "envelope_exponent": 5,
    "num_before_skip": 1,
    "num_after_skip": 2,
    "num_output_layers": 3,
    "readout": "mean",
    "graph": "radius",
}
"""CDVAE's ``conf/model/encoder/dimenet.yaml``, except ``graph``: absent it is ``radius`` (the
7 Å / 20-neighbour graph, so checkpoints written before the key load as trained); the ``paper``
configs set CDVAE's precomputed ``crystalnn`` graph."""

VAE_DEFAULTS: dict[str, Any] = {
    "latent_dim": 256,
    "hidden_dim": 256,
    "fc_num_layers": 1,
    "max_atoms": 20,
    "beta": 0.01,
    "cost_natom": 1.0,
    "cost_lattice": 10.0,
    "cost_composition": 1.0,
    "teacher_forcing_max_epoch": 1500,
    "denoising_samples": 1,
    "reconstruct_from": "mu",
    "progress": True,
    "predict_property": False,
    "property": None,
    "cost_property": 1.0,
    "encoder": ENCODER_DEFAULTS,
}


def build_mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    """MLP head: Linear(in, hidden), ReLU, (Linear, ReLU) × (layers − 1), Linear(hidden, out)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU()]
    for _ in range(num_layers - 1):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


def merge_config(defaults: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``config`` over ``defaults`` (nested dicts merged key by key)."""
    merged = copy.deepcopy(defaults)
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def per_crystal_mean(values: Tensor, batch: Tensor, num_crystals: int) -> Tensor:
    """Mean of per-atom values within each crystal, then over the crystals (a scalar)."""
    return scatter(values, batch, dim=0, dim_size=num_crystals, reduce="mean").mean()


def recenter(frac: Tensor, batch: Tensor, num_crystals: int) -> Tensor:
    """Subtract each crystal's mean from its per-atom rows (DP-CDVAE's re-centring)."""
    mean = scatter(frac, batch, dim=0, dim_size=num_crystals, reduce="mean")
    return frac - mean[batch]


def sample_composition(
    probabilities: Tensor, num_atoms: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Atom types from predicted composition distributions, as CDVAE samples them.

    For each crystal, round p·N to counts per element; if they fall short of N, draw the rest
    multinomially from the positive part of p − counts/N; shuffle and keep N atoms.

    Parameters
    ----------
    probabilities
        [B, 100] composition distributions (index k is Z = k + 1).
    num_atoms
        [B] atoms per crystal (≥ 1).

    Returns
    -------
    Tensor
        [Σ N] atomic numbers, crystal after crystal.
    """
    out: list[Tensor] = []
    for prob, n_tensor in zip(probabilities, num_atoms, strict=True):
        n = int(n_tensor)
        counts = torch.round(prob * n).long()
        types = torch.repeat_interleave(torch.arange(1, len(prob) + 1, device=prob.device), counts)
        missing = n - len(types)
        if missing > 0:
            rest = (prob - counts.to(prob.dtype) / n).clamp(min=0.0)
            if float(rest.sum()) <= 0.0:
                rest = prob
            extra = torch.multinomial(rest, missing, replacement=True, generator=generator) + 1
            types = torch.cat([types, extra])
        order = torch.randperm(len(types), generator=generator, device=prob.device)
        out.append(types[order][:n])
    return torch.cat(out)


def degenerate_lattices(
    lattice: Tensor, num_atoms: Tensor, min_volume_per_atom: float = 1.0, min_length: float = 0.5
) -> Tensor:
    """[B] mask of lattices too degenerate to build a periodic graph on.

    A predicted cell with a (near-)zero volume or a vanishing vector has huge reciprocal vectors,
    so the periodic image enumeration of the radius graph would explode; such crystals are
    decoded on a placeholder cell instead (and come out invalid, with their predicted lattice).
    """
    finite = torch.isfinite(lattice).flatten(1).all(-1)
    safe = torch.where(finite.view(-1, 1, 1), lattice, torch.zeros_like(lattice))
    per_atom = torch.linalg.det(safe).abs() / num_atoms.to(lattice.dtype)
    shortest = safe.norm(dim=-1).min(dim=-1).values
    return ~finite | (per_atom < min_volume_per_atom) | (shortest < min_length)


_GRAPH_STORES: dict[str, EncoderGraphStore] = {}


def graph_store() -> EncoderGraphStore:
    """The process's CrystalNN graph store in the current data cache directory."""
    directory = str(cache_dir())
    if directory not in _GRAPH_STORES:
        _GRAPH_STORES[directory] = EncoderGraphStore(Path(directory))
    return _GRAPH_STORES[directory]


def data_workers() -> int:
    """Processes for CrystalNN graphs: ``DFTLOOP_DATA_WORKERS`` (default 2)."""
    value = os.environ.get("DFTLOOP_DATA_WORKERS", "").strip()
    return max(1, int(value)) if value else 2


def batch_encoder_edges(batch: Batch, workers: int = 1) -> tuple[Tensor, Tensor]:
    """CrystalNN edges of a crystal batch from the graph store (computing missing ones).

    Returns
    -------
    tuple
        ``edge_index`` [2, E] (neighbour j, centre i; batch atom indices) and integer image
        ``cell_offsets`` [E, 3] (float), on the batch's device.
    """
    num_atoms = batch.num_atoms.view(-1).cpu()
    numbers = batch.atom_types.detach().cpu().numpy()
    frac = batch.frac_coords.detach().cpu().float().numpy()
    lattices = batch.lattice.detach().cpu().float().view(-1, 3, 3).numpy()
    starts = (torch.cumsum(num_atoms, 0) - num_atoms).tolist()
    crystals = [
        (numbers[s : s + int(n)], frac[s : s + int(n)], lattices[k])
        for k, (s, n) in enumerate(zip(starts, num_atoms.tolist(), strict=True))
    ]
    ids = getattr(batch, "material_id", None)
    labels = [str(m) for m in ids] if isinstance(ids, list | tuple) else None
    graphs = graph_store().graphs(crystals, labels, workers)
    sources, targets, offsets = [], [], []
    for start, graph in zip(starts, graphs, strict=True):
        sources.append(torch.tensor(graph.sources, dtype=torch.long) + start)
        targets.append(torch.tensor(graph.targets, dtype=torch.long) + start)
        offsets.append(torch.tensor(graph.offsets, dtype=torch.float32).view(-1, 3))
    device = batch.frac_coords.device
    edge_index = torch.stack([torch.cat(sources), torch.cat(targets)]).to(device)
    return edge_index, torch.cat(offsets).to(device=device, dtype=batch.frac_coords.dtype)


SCALE_FIT_CRYSTALS = 32
"""Training crystals on which GemNet-T's scale factors are fitted (``fit_statistics``)."""


def placeholder_lattice(num_atoms: Tensor) -> Tensor:
    """Cubic cells of 10 Å^3 per atom, [B, 3, 3]."""
    side = (10.0 * num_atoms.float()).pow(1.0 / 3.0)
    return torch.eye(3, device=num_atoms.device).unsqueeze(0) * side.view(-1, 1, 1)


class CrystalVAE(CrystalGenerator):
    """Encoder, latent, MLP heads and the shared training/sampling logic of the CDVAE family.

    Parameters
    ----------
    config
        The ``model`` section: see ``VAE_DEFAULTS`` and the subclasses' defaults.
    """

    supports: ClassVar[frozenset[str]] = frozenset({"generate", "reconstruct"})
    defaults: ClassVar[dict[str, Any]] = VAE_DEFAULTS

    def validation_loss(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """The papers' validation loss: ``val_cost_coord``·coord + ``val_cost_type``·type.

        CDVAE weighs 10·coord + 1·type, DP-CDVAE 1·coord + 0.1·type (set in the configs); the
        other terms are reported, not summed. As in both originals the decoder works on the
        *predicted* lattice at every epoch (no teacher forcing; the number of atoms is the true
        one, as the originals' validation step uses it too), so the validation loss that drives
        the plateau scheduler and the choice of ``best.pt`` measures what sampling will see.
        """
        terms = self.training_loss(batch, epoch, teacher_forcing=False)
        terms["loss"] = (
            self.config["val_cost_coord"] * terms["coord"]
            + self.config["val_cost_type"] * terms["type"]
        )
        return terms

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = merge_config(self.defaults, config)
        super().__init__(cfg)
        latent = int(cfg["latent_dim"])
        hidden = int(cfg["hidden_dim"])
        layers = int(cfg["fc_num_layers"])
        self.latent_dim = latent
        self.max_atoms = int(cfg["max_atoms"])
        self.progress = bool(cfg["progress"])
        self.denoising_samples = int(cfg["denoising_samples"])
        if self.denoising_samples < 1:
            raise ValueError(f"model.denoising_samples must be >= 1, got {self.denoising_samples}")
        self.encoder = PeriodicDimeNetPP(out_channels=latent, **cfg["encoder"])
        self.fc_mu = nn.Linear(latent, latent)
        self.fc_var = nn.Linear(latent, latent)
        self.fc_num_atoms = build_mlp(latent, hidden, layers, self.max_atoms + 1)
        self.fc_lattice = build_mlp(latent, hidden, layers, 6)
        self.fc_composition = build_mlp(latent, hidden, layers, MAX_ATOMIC_NUMBER)
        self.register_buffer("lattice_mean", torch.zeros(6))
        self.register_buffer("lattice_std", torch.ones(6))
        self.register_buffer("statistics_fitted", torch.tensor(False))
        self.predicts_property = bool(cfg["predict_property"])
        if self.predicts_property:
            if not cfg["property"]:
                raise ValueError("model.predict_property needs model.property (e.g. heat_ref)")
            self.fc_property = build_mlp(latent, hidden, layers, 1)
            self.register_buffer("property_mean", torch.zeros(()))
            self.register_buffer("property_std", torch.ones(()))

    # ------------------------------------------------------------------ statistics
    @property
    def chain_progress(self) -> bool:
        """Whether the sampling chain shows a progress bar.

        The sampler's ``progress`` option (``configure_sampling(progress=...)``), else the
        config's ``progress``.
        """
        return bool(self.sampling_options.get("progress", self.progress))

    def fit_statistics(self, train: Batch) -> None:
        """Fit the lattice scaler (mean and std of lengths/N^(1/3) and angles) on ``train``.

        Raises
        ------
        ValueError
            If a training crystal has more atoms than ``max_atoms`` (naming it).
        """
        num_atoms = train.num_atoms.view(-1)
        too_big = (num_atoms > self.max_atoms).nonzero().view(-1).tolist()
        if too_big:
            ids = [str(train.material_id[k]) for k in too_big[:5]]
            raise ValueError(
                f"{len(too_big)} training crystals have more than max_atoms={self.max_atoms} "
                f"atoms (e.g. {', '.join(ids)}); raise model.max_atoms"
            )
        features = scaled_lattice_features(train.lattice.view(-1, 3, 3).float(), num_atoms)
        self.lattice_mean.copy_(features.mean(0))
        self.lattice_std.copy_(features.std(0, unbiased=False).clamp(min=1e-6))
        self.statistics_fitted.fill_(True)
        if self.predicts_property:
            self.fit_property_scaler(train)
        self.precompute_encoder_graphs(train)
        self.fit_decoder_scales(train)

    def fit_property_scaler(self, train: Batch) -> None:
        """Mean and std of the training crystals' property ``y`` (CDVAE's ``prop_scaler``).

        Raises
        ------
        ValueError
            If the training crystals carry no finite value of the property.
        """
        name = self.config["property"]
        y = getattr(train, "y", None)
        values = None if y is None else y.view(-1).float()
        if values is None or not bool(torch.isfinite(values).any()):
            raise ValueError(
                f"model.predict_property: the training crystals carry no {name} values "
                "(a split without property columns cannot train the property head)"
            )
        values = values[torch.isfinite(values)]
        self.property_mean.copy_(values.mean())
        self.property_std.copy_(values.std(unbiased=False).clamp(min=1e-6))

    def predict_property(self, z: Tensor) -> Tensor:
        """The property head's prediction [B] from z, in the property's units.

        Raises
        ------
        ValueError
            If the model has no property head (``model.predict_property`` false).
        """
        if not self.predicts_property:
            raise ValueError(f"this {self.name} model has no property head (predict_property)")
        return self.fc_property(z).squeeze(-1) * self.property_std + self.property_mean

    def fit_decoder_scales(self, train: Batch) -> list[float]:
        """Fit the decoder's scale factors (GemNet-T) on the first training crystals.

        The factors are fitted one after the other on this model's own denoising inputs (one
        noisy training batch of at most ``SCALE_FIT_CRYSTALS`` crystals, teacher-forced
        lattice), with the global random state restored afterwards. A decoder without scale
        factors (``dimenet_pp``) is left alone.

        Returns
        -------
        list of float
            The fitted factors (empty for a decoder without any).
        """
        fit = getattr(self.decoder, "fit_scale_factors", None)
        if fit is None or train.num_graphs == 0:
            return []
        subset = data_list_to_batch(
            train.index_select(range(min(SCALE_FIT_CRYSTALS, train.num_graphs)))
        )
        subset = subset.to(self.device)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            return fit(lambda: self.training_loss(subset, epoch=0))

    def scale_lattice(self, lattice: Tensor, num_atoms: Tensor) -> Tensor:
        """Standardised lattice target [B, 6] of [B, 3, 3] lattices."""
        return (scaled_lattice_features(lattice, num_atoms) - self.lattice_mean) / self.lattice_std

    def unscale_lattice(self, scaled: Tensor, num_atoms: Tensor) -> Tensor:
        """Lattice matrices [B, 3, 3] from standardised predictions [B, 6]."""
        features = scaled * self.lattice_std + self.lattice_mean
        return lattice_from_scaled_features(features, num_atoms)

    # ------------------------------------------------------------------ encoder / heads
    def encoder_edges(self, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """The CrystalNN edges of a batch for a ``crystalnn`` encoder (``None`` for ``radius``).

        Edges attached to the batch (``encoder_edge_index`` [2, E], ``encoder_cell_offsets``
        [E, 3]) are used as they are; otherwise each crystal's graph comes from the
        :class:`~generators.data.cache.EncoderGraphStore` of the data cache, which computes
        the ones it has not seen (in ``DFTLOOP_DATA_WORKERS`` processes when a batch has many
        new crystals) and keeps them for every later run.

        Raises
        ------
        EncoderGraphError
            If CrystalNN fails on a crystal of the batch (naming it).
        """
        if self.encoder.graph != "crystalnn":
            return None
        if hasattr(batch, "encoder_edge_index") and hasattr(batch, "encoder_cell_offsets"):
            return batch.encoder_edge_index, batch.encoder_cell_offsets
        return batch_encoder_edges(batch, workers=data_workers())

    def precompute_encoder_graphs(self, crystals: Batch) -> int:
        """Compute and store the CrystalNN graphs of many crystals at once (in parallel).

        :meth:`fit_statistics` calls it on the training split, so the graphs of a dataset are
        computed once, in ``DFTLOOP_DATA_WORKERS`` processes (default 2), and read from the data
        cache by every later run. Nothing happens for a ``radius`` encoder.

        Returns
        -------
        int
            The number of crystals whose graphs are now stored.
        """
        if self.encoder.graph != "crystalnn" or crystals.num_graphs == 0:
            return 0
        batch_encoder_edges(crystals, workers=data_workers())
        return int(crystals.num_graphs)

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance [B, latent] of a crystal batch."""
        hidden = self.encoder(
            batch.frac_coords,
            batch.atom_types,
            batch.lattice.view(-1, 3, 3),
            batch.num_atoms.view(-1),
            batch.batch,
            self.encoder_edges(batch),
        )
        return self.fc_mu(hidden), self.fc_var(hidden)

    @staticmethod
    def reparameterize(
        mu: Tensor, log_var: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample z = mu + exp(log_var / 2)·ε."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * log_var) * eps

    @staticmethod
    def kl_divergence(mu: Tensor, log_var: Tensor) -> Tensor:
        """KL(q(z|x) ‖ N(0, I)), summed over the latent dims, mean over the batch."""
        return (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(dim=1)).mean()

    def predict_statistics(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Heads from z.

        Returns atom-count logits [B, max+1], the scaled lattice [B, 6] and composition
        logits [B, 100].
        """
        return self.fc_num_atoms(z), self.fc_lattice(z), self.fc_composition(z)

    # ------------------------------------------------------------------ denoiser
    def build_decoder(
        self, extra_atom_dim: int = 0, type_head_sees_conditioning: bool = False
    ) -> nn.Module:
        """The decoder named by ``model.decoder.type`` (``gemnet_t``; missing: ``dimenet_pp``)."""
        return build_decoder(
            self.config["decoder"],
            self.latent_dim,
            extra_atom_dim=extra_atom_dim,
            type_head_sees_conditioning=type_head_sees_conditioning,
        )

    @staticmethod
    def noisy_atom_types(
        atom_types: Tensor, composition_logits: Tensor, batch_index: Tensor, type_sigma: Tensor
    ) -> Tensor:
        """Noisy types drawn from onehot(Z) + softmax(composition)·σ_type, both papers' type noise.

        Parameters
        ----------
        atom_types
            [N] true atomic numbers.
        composition_logits
            [B, 100] predicted composition (detached here: the noise gets no gradient).
        batch_index
            [N] crystal of each atom.
        type_sigma
            [N] σ_type of each atom's crystal.

        Raises
        ------
        FloatingPointError
            If the composition logits of a crystal are not finite (a diverged model), naming
            the crystals' positions in the batch; the trainer turns it into
            :class:`~generators.trainer.TrainingDivergedError`.
        """
        finite = torch.isfinite(composition_logits.detach()).all(-1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise FloatingPointError(
                f"non-finite composition logits for crystals {bad} of the batch "
                "(type noise cannot be drawn)"
            )
        probs = F.one_hot(atom_types - 1, MAX_ATOMIC_NUMBER).float() + F.softmax(
            composition_logits.detach(), dim=-1
        )[batch_index] * type_sigma.unsqueeze(-1)
        return torch.multinomial(probs, 1).squeeze(-1) + 1

    @staticmethod
    def denoising_terms(
        coord: Tensor,
        type_logits: Tensor,
        atom_types: Tensor,
        type_sigma: Tensor,
        batch_index: Tensor,
        num_crystals: int,
    ) -> dict[str, Tensor]:
        """``"coord"`` and ``"type"`` (CE/σ_type) losses: mean per crystal, then over crystals."""
        type_ce = F.cross_entropy(type_logits, atom_types - 1, reduction="none") / type_sigma
        return {
            "coord": per_crystal_mean(coord, batch_index, num_crystals),
            "type": per_crystal_mean(type_ce, batch_index, num_crystals),
        }

    def type_weight(self) -> float:
        """Weight of the type loss: ``cost_type`` (CDVAE 1, DP-CDVAE 0.1)."""
        return float(self.config["cost_type"])

    # ------------------------------------------------------------------ training
    def denoising_loss(
        self,
        batch: Batch,
        z: Tensor,
        lattice: Tensor,
        composition_logits: Tensor,
        epoch: int,
    ) -> dict[str, Tensor]:
        """Coordinate and type loss terms (``"coord"``, ``"type"``) of the model's denoiser."""
        raise NotImplementedError

    def coordinate_weight(self, epoch: int) -> float:
        """Weight of the coordinate loss at ``epoch``."""
        raise NotImplementedError

    def training_loss(
        self, batch: Batch, epoch: int, teacher_forcing: bool | None = None
    ) -> dict[str, Tensor]:
        """All loss terms of one batch; ``"loss"`` is the paper-weighted sum.

        Parameters
        ----------
        batch
            Crystal batch.
        epoch
            Current epoch (teacher forcing and epoch-dependent weights).
        teacher_forcing
            Decode on the true lattice (``True``) or on the predicted one (``False``); ``None``
            (training): the true one before ``teacher_forcing_max_epoch``. A predicted cell too
            degenerate for a periodic graph is replaced by the true one either way.
        """
        cfg = self.config
        num_atoms = batch.num_atoms.view(-1)
        lattice = batch.lattice.view(-1, 3, 3)
        b = len(num_atoms)
        if bool((num_atoms > self.max_atoms).any()):
            raise ValueError(f"a crystal of this batch has more than max_atoms={self.max_atoms}")
        mu, log_var = self.encode(batch)
        z = self.reparameterize(mu, log_var)
        natom_logits, lattice_pred, comp_logits = self.predict_statistics(z)
        natom = F.cross_entropy(natom_logits, num_atoms)
        lattice_loss = F.mse_loss(lattice_pred, self.scale_lattice(lattice, num_atoms))
        composition = per_crystal_mean(
            F.cross_entropy(comp_logits[batch.batch], batch.atom_types - 1, reduction="none"),
            batch.batch,
            b,
        )
        kl = self.kl_divergence(mu, log_var)
        if teacher_forcing is None:
            teacher_forcing = epoch < int(cfg["teacher_forcing_max_epoch"])
        if teacher_forcing:
            decoder_lattice = lattice
        else:
            decoder_lattice = self.unscale_lattice(lattice_pred.detach(), num_atoms)
            bad = degenerate_lattices(decoder_lattice, num_atoms)
            decoder_lattice = torch.where(bad.view(-1, 1, 1), lattice, decoder_lattice)
        # the papers draw one noise sample per crystal and step (denoising_samples: 1); more
        # draws reuse the one encoding and average the terms (an option for short CPU runs)
        draws = [
            self.denoising_loss(batch, z, decoder_lattice, comp_logits, epoch)
            for _ in range(self.denoising_samples)
        ]
        terms = {key: torch.stack([d[key] for d in draws]).mean() for key in draws[0]}
        loss = (
            cfg["cost_natom"] * natom
            + cfg["cost_lattice"] * lattice_loss
            + cfg["cost_composition"] * composition
            + cfg["beta"] * kl
            + self.coordinate_weight(epoch) * terms["coord"]
            + self.type_weight() * terms["type"]
        )
        out = {
            "loss": loss,
            "natom": natom,
            "lattice": lattice_loss,
            "composition": composition,
            "kl": kl,
            "coord": terms["coord"],
            "type": terms["type"],
        }
        if self.predicts_property:
            out["property"] = self.property_loss(z, batch)
            out["loss"] = loss + float(cfg["cost_property"]) * out["property"]
        return out

    def property_loss(self, z: Tensor, batch: Batch) -> Tensor:
        """MSE of the property head on the standardised property ``y`` (CDVAE's property_loss).

        Crystals without a finite ``y`` do not count; a batch with none gives 0.
        """
        y = getattr(batch, "y", None)
        if y is None:
            return z.new_zeros(())
        target = (y.view(-1).to(z.dtype) - self.property_mean) / self.property_std
        known = torch.isfinite(target)
        if not bool(known.any()):
            return z.new_zeros(())
        pred = self.fc_property(z).squeeze(-1)
        return F.mse_loss(pred[known], target[known])

    # ------------------------------------------------------------------ sampling
    def sample_structure(
        self,
        z: Tensor,
        num_atoms: Tensor,
        lattice: Tensor,
        atom_types: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """Denoise coordinates and types from z: returns (frac_coords [N, 3], atom_types [N])."""
        raise NotImplementedError

    @torch.no_grad()
    def decode(
        self,
        z: Tensor,
        generator: torch.Generator | None = None,
        material_ids: list[str] | None = None,
    ) -> Batch:
        """Decode latent codes into a crystal batch.

        Atom count (argmax), lattice and composition come from the heads, then the model's
        coordinate/type sampler runs.
        """
        natom_logits, lattice_pred, comp_logits = self.predict_statistics(z)
        num_atoms = natom_logits.argmax(-1).clamp(min=1)
        lattice = self.unscale_lattice(lattice_pred, num_atoms)
        types = sample_composition(F.softmax(comp_logits, dim=-1), num_atoms, generator)
        bad = degenerate_lattices(lattice, num_atoms)
        work_lattice = torch.where(bad.view(-1, 1, 1), placeholder_lattice(num_atoms), lattice)
        frac, types = self.sample_structure(z, num_atoms, work_lattice, types, generator)
        ids = material_ids or [f"{self.name}-{k}" for k in range(len(z))]
        data, start = [], 0
        for k, n in enumerate(num_atoms.tolist()):
            data.append(
                Data(
                    frac_coords=torch.remainder(frac[start : start + n], 1.0).float(),
                    atom_types=types[start : start + n].long(),
                    lattice=lattice[k : k + 1].float(),
                    num_atoms=torch.tensor([n]),
                    num_nodes=n,
                    material_id=ids[k],
                )
            )
            start += n
        return data_list_to_batch(data)

    @torch.no_grad()
    def sample_generate(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """Generate ``n`` crystals from z ~ N(0, I)."""
        if n < 1:
            raise ValueError(f"number of crystals to generate must be >= 1, got {n}")
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        return self.decode(z, generator)

    @torch.no_grad()
    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Encode ``batch`` and decode it; the crystals keep their material ids.

        Decodes from mu, or from a posterior sample if ``reconstruct_from`` is ``"sample"``.
        """
        mu, log_var = self.encode(batch)
        z = (
            mu
            if self.config["reconstruct_from"] == "mu"
            else self.reparameterize(mu, log_var, generator)
        )
        ids = [str(m) for m in batch.material_id] if hasattr(batch, "material_id") else None
        return self.decode(z, generator, ids)


__all__ = [
    "ENCODER_DEFAULTS",
    "VAE_DEFAULTS",
    "CrystalVAE",
    "build_mlp",
    "degenerate_lattices",
    "merge_config",
    "per_crystal_mean",
    "placeholder_lattice",
    "recenter",
    "sample_composition",
]
