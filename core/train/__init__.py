"""Training, on both sides of the process boundary.

The worker side runs in the training process: ``worker`` (its entry point), ``loop``,
``schedule`` (when it reports, validates, saves), ``batches``, ``loss``, ``preference`` (DPO
and ORPO as losses of the same loop), ``checkpoints``; it imports no service code and no
adapter store. The service side runs in the studio: ``service`` starts and resumes runs,
``process`` follows one worker, ``diagnosis`` reads why a worker died, ``runs`` keeps
unfinished runs, ``publish`` turns a finished run into an adapter, ``plan`` predicts a run's
memory.

May import: adapters, models, machine, data and core/'s root; never serve or eval.
"""
