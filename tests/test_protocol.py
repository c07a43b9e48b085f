from core import protocol


def test_round_trip_of_every_message():
    messages = [
        protocol.Start(
            total_steps=10,
            epochs=2,
            steps_per_epoch=5,
            num_train=20,
            num_val=5,
            trainable_params=100,
            total_params=1000,
            blas="mkl",
        ),
        protocol.Progress(
            step=1,
            total_steps=10,
            epoch=1,
            loss=2.5,
            learning_rate=1e-4,
            tokens_per_second=100.0,
            peak_memory_gb=0.1,
            progress=10.0,
        ),
        protocol.Validation(step=5, epoch=1, loss=2.0),
        protocol.Checkpoint(step=5, path="/x/adapters.safetensors"),
        protocol.Complete(adapter_path="/x", steps=10, final_loss=1.5),
        protocol.Error(error="boom", kind="out_of_memory", hint="lower the batch size"),
    ]
    for message in messages:
        line = message.to_line()
        assert line.endswith("\n") and line.count("\n") == 1
        assert protocol.parse_line(line) == message


def test_garbage_is_ignored_not_fatal():
    for line in [
        "",
        "not json at all",
        "\x1b[32m rich progress bar \x1b[0m",
        "[1, 2, 3]",
        '{"no_type": 1}',
        '{"type": "telemetry", "x": 1}',
        '{"type": "progress", "step": "many"}',
    ]:
        assert protocol.parse_line(line) is None


def test_unknown_extra_fields_are_tolerated():
    event = protocol.parse_line(
        '{"type": "validation", "step": 1, "epoch": 1, "loss": 1.0, "x": 2}'
    )
    assert event == protocol.Validation(step=1, epoch=1, loss=1.0)
