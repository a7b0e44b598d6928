"""Training PanGu-Sigma: the expert weights' own Adam epsilon, and their optimizer state on the host.

The step is `pangu_ms.train.step`'s (loss scale, global-norm clip over ALL gradients, overflow
skip); what differs is who applies the update to the expert weights (`is_expert_parameter`):

- `experts.host_expert_state: false`: a second AdamW on the device with `experts.expert_eps`
  (the dense weights keep `optimizer.eps`), updating every expert every step like any weight;
- `experts.host_expert_state: true` (the paper's expert computation and storage separation): the
  step Cell applies AdamW to the dense weights only and returns the experts' clipped, unscaled
  gradients; `HostExpertAdam` keeps their moments in host memory (NumPy) and updates, per sparse
  layer, only the experts that received tokens in the step, read from the routing tables and the
  batch's token and domain ids (routing needs no activations). An expert that got no token keeps
  its weights and both moments bit for bit: a lazy update, not a zero-gradient one (AdamW with a
  zero gradient would still move the weight by its momentum and decay).

`HostExpertAdam` computes MindSpore's `nn.AdamWeightDecay` rule (no bias correction):
m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; u = m / (sqrt(v) + eps) (+ wd * w where decayed);
w -= lr * u. Its moments and step count are Parameters of the train Cell that no graph reads
(`HostExpertState`): they stay in host memory, and checkpoints save and resume them.
"""
from __future__ import annotations

import logging

import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from pangu_ms.config import JobConfig, OptimizerConfig, ScheduleConfig
from pangu_ms.kernels.switch import job_kernel_spec
from pangu_ms.models.pangu_sigma import PanguSigmaWithLoss, is_expert_parameter, route_tokens
from pangu_ms.train.optimizer import build_optimizer, decays, lr_at
from pangu_ms.train.step import StepResult, TrainStep, _square_sum, _unscale, new_loss_scale

logger = logging.getLogger(__name__)


class TwoGroupAdam(nn.Cell):
    """Dense AdamW then expert AdamW (own eps) over one gradient tuple ordered dense + experts."""

    def __init__(self, dense: nn.Optimizer, experts: nn.Optimizer):
        super().__init__(auto_prefix=False)
        self.dense, self.experts = dense, experts
        experts.global_step.name = "expert_global_step"  # one name per Parameter in a checkpoint
        self.parameters = ParameterTuple(list(dense.parameters) + list(experts.parameters))
        self.n_dense = len(dense.parameters)
        self.global_step = dense.global_step

    def construct(self, grads):
        done = self.dense(grads[:self.n_dense])
        return ops.depend(done, self.experts(grads[self.n_dense:]))


class SigmaTrainStep(TrainStep):
    """`TrainStep` over the dense + expert weights; with `host` the optimizer updates the dense
    ones and the step also returns the experts' final (unscaled, clipped) gradients."""

    def __init__(self, network: nn.Cell, optimizer: nn.Cell, loss_scale, opt: OptimizerConfig, *,
                 weights: list, n_dense: int, host: bool):
        super().__init__(network, optimizer, loss_scale, opt)
        self.weights = ParameterTuple(weights)
        self.n_dense = n_dense
        self.host = host

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scale = self.loss_scale * 1.0
        sens = ops.ones_like(loss) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        inv_scale = 1.0 / scale
        norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads))) * inv_scale
        overflow = ops.logical_not(ops.isfinite(norm))
        overflow = self.scale_update(self.loss_scale, overflow)
        factor = inv_scale
        if self.clip_norm > 0:
            factor = factor * (self.clip_norm / ops.maximum(norm, self.clip_norm))
        grads = self.hyper_map(ops.partial(_unscale, factor), grads)
        if not overflow:
            if self.host:
                norm = ops.depend(norm, self.optimizer(grads[:self.n_dense]))
            else:
                norm = ops.depend(norm, self.optimizer(grads))
        return loss, overflow, norm, grads[self.n_dense:]


class HostExpertState(nn.Cell):
    """`HostExpertAdam`'s moments and step count as Parameters that no graph reads: they live in
    host memory, and, as part of the train Cell, checkpoints save and resume them with the rest."""

    def __init__(self, params: list):
        super().__init__(auto_prefix=False)

        def zeros(name, shape, dtype=np.float32):
            return Parameter(Tensor(np.zeros(shape, dtype)), name=name, requires_grad=False)

        self.m = ParameterTuple([zeros(f"host_adam_m.{p.name}", p.shape) for p in params])
        self.v = ParameterTuple([zeros(f"host_adam_v.{p.name}", p.shape) for p in params])
        self.step = zeros("host_adam_step", (), np.int32)


class HostExpertAdam:
    """AdamW over the expert weights with moments in host memory, updating only the experts that
    received tokens (see the module docstring)."""

    def __init__(self, params: list, opt: OptimizerConfig, sched: ScheduleConfig, total_steps: int, eps: float):
        self.params = params
        self.opt, self.sched, self.total, self.eps = opt, sched, total_steps, eps
        self.state = HostExpertState(params)

    @property
    def m(self) -> dict[str, np.ndarray]:
        """first moments by expert parameter name (copies)."""
        return {p.name: pm.asnumpy() for p, pm in zip(self.params, self.state.m)}

    @property
    def v(self) -> dict[str, np.ndarray]:
        """second moments by expert parameter name (copies)."""
        return {p.name: pv.asnumpy() for p, pv in zip(self.params, self.state.v)}

    @property
    def steps(self) -> int:
        """updates applied so far (the learning-rate schedule's position)."""
        return int(self.state.step.asnumpy())

    def update(self, grads: list[np.ndarray], touched: dict[str, np.ndarray]) -> None:
        """grads: one per param; touched: RRE layer path (`...ffn`) -> bool [E] experts with tokens."""
        lr = np.float32(lr_at(self.steps, self.opt, self.sched, self.total))
        b1, b2, eps = np.float32(self.opt.beta1), np.float32(self.opt.beta2), np.float32(self.eps)
        one = np.float32(1.0)
        for p, g, pm, pv in zip(self.params, grads, self.state.m, self.state.v):
            rows = np.flatnonzero(touched[p.name.rsplit(".", 1)[0]])
            if rows.size == 0:
                continue
            w, m, v = p.asnumpy().copy(), pm.asnumpy().copy(), pv.asnumpy().copy()
            g = np.asarray(g, np.float32)[rows]
            m[rows] = b1 * m[rows] + (one - b1) * g
            v[rows] = b2 * v[rows] + (one - b2) * g * g
            u = m[rows] / (np.sqrt(v[rows]) + eps)
            if decays(p.name):
                u = u + np.float32(self.opt.weight_decay) * w[rows]
            w[rows] = w[rows] - lr * u
            p.set_data(Tensor(w))
            pm.set_data(Tensor(m))
            pv.set_data(Tensor(v))
        self.state.step.set_data(Tensor(np.array(self.steps + 1, np.int32)))


def expert_parameters(net: nn.Cell) -> tuple[list, list]:
    """(dense, expert) trainable parameters of a Sigma network, in model order."""
    params = net.trainable_params()
    return [p for p in params if not is_expert_parameter(p.name)], [p for p in params if is_expert_parameter(p.name)]


def touched_experts(net: PanguSigmaWithLoss, input_ids: np.ndarray, domain_ids: np.ndarray) -> dict[str, np.ndarray]:
    """RRE layer path (as in parameter names, `lm.backbone.blocks.3.ffn`) -> bool [E]: the experts
    that receive at least one kept token of this batch (input rows [B, S+1]: the model sees [:, :S])."""
    s = net.config.seq_length
    ids = np.asarray(input_ids)[:, :s]
    out = {}
    for name, cell in net.cells_and_names():
        if name.endswith(".ffn") and hasattr(cell, "route"):
            e = cell.num_experts
            load, dropped = route_tokens(cell.route.asnumpy(), ids, domain_ids, cell.capacity(ids.size), e)
            out[cell.route.name.rsplit(".", 1)[0]] = (load - dropped) > 0
    return out


class SigmaTrainer:
    """`Trainer`'s interface (`step`, `cell`, `optimizer_step`, `accum_steps`) for PanGu-Sigma.

    One micro-batch per step (grad_accum_steps 1); inputs (rows, positions, document ids, domain ids)."""

    def __init__(self, net: PanguSigmaWithLoss, job: JobConfig):
        if job.train.grad_accum_steps != 1:
            raise ValueError("PanGu-Sigma training here takes one micro-batch per step (train.grad_accum_steps=1)")
        self.net, self.accum_steps = net, 1
        ex, opt = job.experts, job.optimizer
        dense, experts = expert_parameters(net)
        self.host = ex.host_expert_state
        dense_opt = build_optimizer(dense, opt, job.schedule, job.train.steps)
        if self.host:
            self.optimizer = dense_opt
            self.host_adam = HostExpertAdam(experts, opt, job.schedule, job.train.steps, ex.expert_eps)
        else:
            expert_opt = build_optimizer(experts, replace_eps(opt, ex.expert_eps), job.schedule, job.train.steps)
            self.optimizer = TwoGroupAdam(dense_opt, expert_opt)
            self.host_adam = None
        self.loss_scale = new_loss_scale(opt)
        self.cell = SigmaTrainStep(net, self.optimizer, self.loss_scale, opt, weights=dense + experts,
                                   n_dense=len(dense), host=self.host)
        if self.host:  # a child of the train Cell, so that checkpoints carry the host state
            self.cell.host_state = self.host_adam.state
        self.cell.set_train(True)
        logger.info("Sigma trainer: %d dense and %d expert tensors, expert state on the %s (eps %g vs %g)",
                    len(dense), len(experts), "host" if self.host else "device", ex.expert_eps, opt.eps)

    def step(self, micro_batches: list[tuple]) -> StepResult:
        (batch,) = micro_batches
        loss, overflow, norm, expert_grads = self.cell(*batch)
        overflow = bool(overflow.asnumpy())
        if self.host and not overflow:
            ids = batch[0].asnumpy() if hasattr(batch[0], "asnumpy") else np.asarray(batch[0])
            dom = batch[3].asnumpy() if hasattr(batch[3], "asnumpy") else np.asarray(batch[3])
            self.host_adam.update([g.asnumpy() for g in expert_grads], touched_experts(self.net, ids, dom))
        return StepResult(loss=float(loss.asnumpy()), overflow=overflow, grad_norm=float(norm.asnumpy()),
                          loss_scale=float(self.loss_scale.asnumpy()))

    @property
    def optimizer_step(self) -> int:
        return int(self.optimizer.global_step.asnumpy().reshape(-1)[0])


def replace_eps(opt: OptimizerConfig, eps: float) -> OptimizerConfig:
    import dataclasses

    return dataclasses.replace(opt, eps=eps)


def build_sigma_trainer(job: JobConfig) -> tuple[PanguSigmaWithLoss, SigmaTrainer]:
    """(loss network, trainer) of a PanGu-Sigma job on one CPU process, its model built with the
    job's kernel spec (`model.kernels`); the updates are the reference AdamW of `SigmaTrainer`
    (the spec's fused optimizer kernel is not used for the two parameter groups)."""
    net = PanguSigmaWithLoss(job.model, job.experts, job_kernel_spec(job))
    return net, SigmaTrainer(net, job)
