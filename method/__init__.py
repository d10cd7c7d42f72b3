"""DL-DKD (ICCV 2023): dual learning with dynamic knowledge distillation for partially relevant video retrieval."""
