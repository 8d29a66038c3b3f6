"""`train`: one DML method on the validated manifest's training classes."""
