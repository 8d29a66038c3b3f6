"""Stage `validate`: great-expectations over the manifest and the files; gates everything downstream."""
