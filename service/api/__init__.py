"""HTTP surface: V1 (named features), V2 (Open Inference Protocol), health, errors, schemas."""
