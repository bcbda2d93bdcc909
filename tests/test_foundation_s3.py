from actors.uri import filesystem_for, redact, storage_options_for


def test_s3_fixture_round_trip(s3):
    fs, path = filesystem_for(s3.uri("a/b.txt"), s3.storage_options)
    with fs.open(path, "wb") as fh:
        fh.write(b"hello")
    assert s3.filesystem().cat(s3.uri("a/b.txt")) == b"hello"


def test_environment_supplies_endpoint(s3):
    options = storage_options_for("s3://x/y")
    assert options["client_kwargs"]["endpoint_url"] == s3.endpoint_url
    fs, path = filesystem_for(s3.uri("c.txt"))
    fs.pipe(path, b"x")
    assert fs.cat(path) == b"x"


def test_redact_removes_credentials(s3):
    text = redact({"key": "testing-key-id", "secret": "s", "client_kwargs": {"endpoint_url": "http://e"}})
    assert text["key"] == "***" and text["secret"] == "***"
    assert text["client_kwargs"]["endpoint_url"] == "http://e"
    assert "testing-secret-value" not in redact("error: bad secret testing-secret-value here")
