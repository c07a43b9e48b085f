"""Datasets made by a teacher model: questions from topics, documents or examples, answers from
the teacher (a model of the studio, or any OpenAI-compatible endpoint), filtered by the judge
and for near-duplicates, written in chunks that survive a kill. Above serve and eval: it
composes the engine, the judge and the evaluation's batched generation."""
