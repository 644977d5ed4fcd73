"""Training: rows from teachers, the tree-structured loss, the student loop, distillation pipelines."""
