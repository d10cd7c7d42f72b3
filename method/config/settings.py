"""The settings each part of the code receives, built once from a run's resolved flags.

Below the entry points nothing reads the flag namespace: the data pipeline
gets ``DataOptions``, the model its ``ModelConfig`` (the student's own
configuration inside), the loss ``LossSettings``, the loop ``TrainSettings``.
"""
from __future__ import annotations

import argparse
import dataclasses

from method.config.flags import fusion_weights, model_settings
from method.data.options import DataOptions
from method.losses.objective import LossSettings, Objective, SoftNCEOptions
from method.models.model import ModelConfig
from method.models.students import student_class
from method.training.optim import OptimSettings
from method.training.runtime import RuntimePolicy
from method.training.schedules import EpochSchedule
from method.training.settings import TrainSettings


def data_options(opt: argparse.Namespace) -> DataOptions:
    return DataOptions(
        root_path=opt.root_path, collection=opt.collection, visual_feature=opt.visual_feature,
        max_ctx_l=opt.max_ctx_l, max_desc_l=opt.max_desc_l, q_feat_size=opt.q_feat_size,
        teacher_video_file=opt.teacher_video_file, teacher_query_file=opt.teacher_query_file,
        teachers=tuple(opt.teachers) if opt.teachers else None, use_teacher=not opt.no_teacher,
        pool_to_teacher=opt.pool_to_teacher, batch_sort=opt.batch_sort, num_workers=opt.num_workers,
        preload=opt.preload, preload_dtype=opt.preload_dtype, eval_video_bsz=opt.eval_video_bsz,
        eval_query_bsz=opt.eval_query_bsz)


def model_config(opt: argparse.Namespace, visual_dim: int = 0, text_dim: int = 0) -> ModelConfig:
    """The model's configuration: the student's own settings from the flags, the input sizes given."""
    student_cfg = dataclasses.replace(model_settings(opt), visual_input_size=visual_dim, query_input_size=text_dim)
    return ModelConfig(student_cfg, opt.student, share_query_proj=not opt.separate_query_proj,
                       single_branch=opt.single_branch)


def loss_settings(opt: argparse.Namespace) -> LossSettings:
    cls = student_class(opt.student)
    losses = cls.Losses(**{f.name: getattr(opt, f.name) for f in dataclasses.fields(cls.Losses)}) \
        if cls.Losses is not None else None
    objective = Objective(**cls.objective_for(model_settings(opt), losses, opt.nce_weight), kd_level=opt.kd_level)
    soft = SoftNCEOptions(opt.soft_nce_leak, opt.soft_detach_self_targets, opt.soft_keep_parts)
    return LossSettings(opt.margin, opt.hard_pool_size, opt.kd_temperature, objective,
                        soft if opt.label_style == "soft" else None)


def epoch_schedule(opt: argparse.Namespace) -> EpochSchedule:
    return EpochSchedule(
        use_teacher=not opt.no_teacher, kd_schedule=opt.kd_schedule, loss_scale_weight=opt.loss_scale_weight,
        loss_init_weight=opt.loss_init_weight, kd_k=opt.kd_k, kd_b=opt.kd_b,
        hard_negative_start_epoch=opt.hard_negative_start_epoch, label_style=opt.label_style, n_epoch=opt.n_epoch,
        alpha=opt.alpha, beta=opt.beta, alpha_decay=opt.alpha_decay, beta_decay=opt.beta_decay,
        soft_exp_k=opt.soft_exp_k, soft_sigmoid_k=opt.soft_sigmoid_k,
        warmup_epoch=getattr(opt, "warmup_epoch", None))  # a student objective's warm-up (Holmes' Losses)


def runtime_policy(opt: argparse.Namespace) -> RuntimePolicy:
    return RuntimePolicy(device=opt.device, tf32=opt.tf32, deterministic=opt.deterministic, amp=opt.amp,
                         compile=opt.compile, fast_path=opt.fast_path, checkpoint_branches=opt.checkpoint_branches,
                         debug=opt.debug, dist_timeout=opt.dist_timeout)


def train_settings(opt: argparse.Namespace) -> TrainSettings:
    """Every part of a training run's settings from its resolved flags (``method.config.flags``)."""
    return TrainSettings(
        recipe=opt.recipe, seed=opt.seed, n_epoch=opt.n_epoch, max_es_cnt=opt.max_es_cnt, bsz=opt.bsz,
        data=data_options(opt), model=model_config(opt), loss=loss_settings(opt), schedule=epoch_schedule(opt),
        optim=OptimSettings(opt.optim, opt.lr, opt.wd, opt.lr_warmup_proportion, opt.exclude_all_norms_from_decay),
        runtime=runtime_policy(opt), fusion=fusion_weights(opt), reuse_query_encoding=opt.reuse_query_encoding,
        record=dict(vars(opt)))
