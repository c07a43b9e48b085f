"""Sweeps: several trainings that differ in the settings a user varies, chosen between by
held-out evaluation. Optuna proposes each trial's settings and prunes the clearly worse ones
from their validation losses; each trial is an ordinary durable run; the study lives in SQLite
in the sweep's folder, so a sweep resumes where it stopped. Above train and eval: it composes
runs, the engine and the evaluation."""
