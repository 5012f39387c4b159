"""The lrbnn model server: FastAPI app over ``model_core`` checkpoints (never its training code)."""
