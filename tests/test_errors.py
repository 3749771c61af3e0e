"""``scencode.errors``: one exception for bad input, whose message starts with the file it names."""

from pathlib import Path

from scencode.errors import ScencodeError


def test_the_message_names_the_file_first_and_keeps_the_path():
    error = ScencodeError("not raw counts", Path("data/x.h5ad"))
    assert str(error) == "data/x.h5ad: not raw counts" and error.path == "data/x.h5ad"
    assert str(ScencodeError("no dataset has role 'train'")) == "no dataset has role 'train'"
    assert ScencodeError("x").path is None
