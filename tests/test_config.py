"""Configuration precedence: flag > env > --config > nova.conf/glance-api.conf > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from recover.config import DEFAULT_STORE_DIR, Value, read_glance_conf, resolve
from recover.errors import ConfigError
from recover.secrets import mask_url, scrub


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "ini": write(
            tmp_path / "recover.ini",
            "[recover]\nglance_db = mysql+pymysql://g:ini@ini/glance\n"
            "nova_api_db = mysql+pymysql://n:ini@ini/nova_api\nstore_dir = /ini/store\n",
        ),
        "nova": write(
            tmp_path / "nova.conf",
            "[DEFAULT]\ndebug = true\n[api_database]\nconnection = mysql+pymysql://n:conf@c/nova_api\n"
            "[database]\nconnection = mysql+pymysql://n:conf@c/nova\n",
        ),
        "glance": write(
            tmp_path / "glance-api.conf",
            "[database]\nconnection = mysql+pymysql://g:conf@c/glance\n"
            "[glance_store]\nfilesystem_store_datadir = /conf/images\n",
        ),
    }


def test_defaults_when_nothing_is_given() -> None:
    settings = resolve({}, environ={})
    assert settings.glance_db is None
    assert settings.nova_api_db is None
    assert settings.cell_urls() == ()
    assert (settings.store_dir.value, settings.store_dir.source) == (DEFAULT_STORE_DIR, "default")


def test_service_files_are_the_lowest_configured_layer(files: dict[str, str]) -> None:
    settings = resolve({"nova_conf": files["nova"], "glance_conf": files["glance"]}, environ={})
    assert settings.nova_api_db is not None
    assert settings.nova_api_db.value == "mysql+pymysql://n:conf@c/nova_api"
    assert settings.glance_db is not None and settings.glance_db.value.endswith("@c/glance")
    assert settings.store_dir.value == "/conf/images"
    # With an API database, nova.conf's [database] is not an explicit cell list: discovery wins.
    assert settings.cell_urls() == ()


def test_config_file_beats_service_files(files: dict[str, str]) -> None:
    settings = resolve(
        {"config": files["ini"], "nova_conf": files["nova"], "glance_conf": files["glance"]},
        environ={},
    )
    assert settings.glance_db is not None and settings.glance_db.value.endswith("@ini/glance")
    assert settings.store_dir.value == "/ini/store"
    assert settings.nova_api_db is not None and "@ini/" in settings.nova_api_db.value


def test_env_beats_config_file_and_flag_beats_env(files: dict[str, str]) -> None:
    env = {
        "RECOVER_CONFIG": files["ini"],
        "RECOVER_GLANCE_DB": "mysql+pymysql://g:env@env/glance",
        "RECOVER_STORE_DIR": "/env/store",
        "RECOVER_NOVA_DB": "mysql+pymysql://a@h/cell1, mysql+pymysql://a@h/cell2",
    }
    settings = resolve({}, environ=env)
    assert settings.glance_db is not None and settings.glance_db.value.endswith("@env/glance")
    assert settings.glance_db.source == "RECOVER_GLANCE_DB"
    assert settings.store_dir.value == "/env/store"
    assert [v.value for v in settings.cell_urls()] == [
        "mysql+pymysql://a@h/cell1",
        "mysql+pymysql://a@h/cell2",
    ]
    settings = resolve(
        {"glance_db": "sqlite:///flag.db", "store_dir": "/flag", "nova_db": ("sqlite:///c.db",)},
        environ=env,
    )
    assert settings.glance_db is not None
    assert (settings.glance_db.value, settings.glance_db.source) == (
        "sqlite:///flag.db",
        "--glance-db",
    )
    assert settings.store_dir.value == "/flag"
    assert [v.value for v in settings.cell_urls()] == ["sqlite:///c.db"]


def test_pre_newton_nova_conf_gives_the_cell(tmp_path: Path) -> None:
    conf = write(tmp_path / "nova.conf", "[database]\nconnection = mysql+pymysql://n:p@db/nova\n")
    settings = resolve({"nova_conf": conf}, environ={})
    assert settings.nova_api_db is None
    assert [v.value for v in settings.cell_urls()] == ["mysql+pymysql://n:p@db/nova"]


def test_glance_multistore_datadir_comes_from_default_backend(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nenabled_backends = ceph:rbd, fast:file, slow:file\nhashing_algorithm = sha256\n"
        "[glance_store]\ndefault_backend = fast\nfilesystem_store_datadir = /ignored\n"
        "[fast]\nfilesystem_store_datadir = /srv/fast\n[slow]\nfilesystem_store_datadir = /srv/slow\n",
    )
    glance = read_glance_conf(conf)
    assert (glance.store_dir, glance.store_id, glance.hashing_algorithm) == (
        "/srv/fast",
        "fast",
        "sha256",
    )


def test_glance_default_backend_on_rbd_has_no_filesystem_dir(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nenabled_backends = ceph:rbd\n[glance_store]\ndefault_backend = ceph\n",
    )
    assert read_glance_conf(conf).store_dir is None
    assert resolve({"glance_conf": conf}, environ={}).store_dir.value == DEFAULT_STORE_DIR


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not an ini file at all\n", "is not a valid ini file"),
        ("[other]\nx = 1\n", "has no [recover] section"),
        ("[recover]\nglance_url = x\n", "unknown key 'glance_url'"),
    ],
)
def test_bad_config_file(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path / "bad.ini", content)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve({"config": path}, environ={})


def test_missing_and_binary_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({"config": str(tmp_path / "nope.ini")}, environ={})
    binary = tmp_path / "bin.ini"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        resolve({"config": str(binary)}, environ={})


def test_passwords_are_masked_everywhere(files: dict[str, str]) -> None:
    resolve({"glance_db": "mysql+pymysql://glance:Gl4nce-pw@db/glance"}, environ={})
    assert mask_url("mysql+pymysql://nova:s3cret@db/nova") == "mysql+pymysql://nova:***@db/nova"
    assert scrub("at mysql://nova:s3cret@db/x failed") == "at mysql://nova:***@db/x failed"
    # A password we were configured with disappears even when a driver quotes it bare.
    assert (
        scrub("denied, password was 'Gl4nce-pw' (Gl4nce-pw)") == "denied, password was '***' (***)"
    )
    assert scrub("OS_PASSWORD=hunter2 token: abc") == "OS_PASSWORD=*** token: ***"


def test_short_passwords_do_not_mangle_words_but_are_masked_in_urls() -> None:
    resolve({"glance_db": "mysql+pymysql://glance:conf@db/glance"}, environ={})
    assert scrub("not configured") == "not configured"
    assert scrub("mysql+pymysql://glance:conf@db/glance") == "mysql+pymysql://glance:***@db/glance"


# --- issue 10 item 16: the filesystem store as glance_store reads it ---------------------------


def test_filesystem_store_datadirs_highest_priority_first(tmp_path: Path) -> None:
    """glance_store _drivers/filesystem.py: the repeatable filesystem_store_datadirs, path:priority
    (0 without one); a new image goes into the highest priority."""
    dirs = {name: tmp_path / name for name in ("low", "high", "none", "mid")}
    conf = write(
        tmp_path / "glance-api.conf",
        "[glance_store]\n"
        f"filesystem_store_datadirs = {dirs['low']}:100\n"
        f"filesystem_store_datadirs = {dirs['high']}:200\n"
        f"filesystem_store_datadirs = {dirs['none']}\n"
        f"filesystem_store_datadirs = {dirs['mid']}:150\n",
    )
    glance = read_glance_conf(conf)
    order = [str(dirs[n]) for n in ("high", "mid", "low", "none")]
    assert (glance.store_dir, list(glance.store_dirs), glance.store_kind) == (
        order[0], order, "file",
    )  # fmt: skip
    settings = resolve({"glance_conf": conf}, environ={})
    assert (settings.store_dir.value, settings.store_dir.source) == (
        order[0], f"{conf} filesystem_store_datadirs",
    )  # fmt: skip
    assert settings.image_dirs() == tuple(order)
    # An explicit --store-dir that is one of them: written there, the others still searched.
    settings = resolve({"glance_conf": conf, "store_dir": order[2]}, environ={})
    assert settings.image_dirs() == (order[2], order[0], order[1], order[3])


def test_multistore_datadirs_and_an_explicit_store_dir_of_another_backend(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "glance-api.conf",
        "[DEFAULT]\nenabled_backends = fast:file, slow:file, web:http\n"
        "[glance_store]\ndefault_backend = fast\n"
        "[fast]\nfilesystem_store_datadirs = /srv/fast-a:1\nfilesystem_store_datadirs = /srv/fast-b:9\n"
        "[slow]\nfilesystem_store_datadir = /srv/slow\n",
    )
    glance = read_glance_conf(conf)
    assert (glance.store_dir, glance.store_dirs, glance.store_id, glance.file_stores) == (
        "/srv/fast-b", ("/srv/fast-b", "/srv/fast-a"), "fast",
        (("fast", ("/srv/fast-b", "/srv/fast-a")), ("slow", ("/srv/slow",))),
    )  # fmt: skip
    settings = resolve({"glance_conf": conf, "store_dir": "/srv/slow"}, environ={})
    assert (settings.glance_store_id, settings.image_dirs()) == ("slow", ("/srv/slow",))
    assert settings.file_store_of(Path("/srv/fast-a")) == "fast"
    assert settings.file_store_of(Path("/srv/elsewhere")) is None


def test_datadir_and_datadirs_together_are_refused_as_glance_does(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "glance-api.conf",
        "[glance_store]\nfilesystem_store_datadir = /a\nfilesystem_store_datadirs = /b:1\n",
    )
    with pytest.raises(ConfigError) as caught:
        read_glance_conf(conf)
    assert str(caught.value) == (
        "glance config [glance_store] sets both filesystem_store_datadir and "
        "filesystem_store_datadirs, which Glance refuses; glance_store accepts only one of them"
    )
    bad = write(tmp_path / "bad.conf", "[glance_store]\nfilesystem_store_datadirs = /b:high\n")
    with pytest.raises(ConfigError) as caught:
        read_glance_conf(bad)
    assert str(caught.value) == (
        "glance config [glance_store] filesystem_store_datadirs: invalid priority in '/b:high'"
    )


@pytest.mark.parametrize(
    "text",
    [
        "[glance_store]\nstores = rbd, file\ndefault_store = rbd\nfilesystem_store_datadir = /x\n",
        "[DEFAULT]\nenabled_backends = ceph:rbd, fs:file\n[glance_store]\ndefault_backend = ceph\n"
        "[fs]\nfilesystem_store_datadir = /x\n",
    ],
    ids=["single-store", "multi-store"],
)
def test_default_store_of_type_rbd_is_known(tmp_path: Path, text: str) -> None:
    conf = write(tmp_path / "glance-api.conf", text)
    glance = read_glance_conf(conf)
    assert (glance.store_kind, glance.store_dir, glance.store_id) == ("rbd", None, None)
    settings = resolve({"glance_conf": conf}, environ={})
    assert (settings.glance_store_kind, settings.store_dir.source) == ("rbd", "default")


@pytest.mark.parametrize(
    ("text", "section", "store_id"),
    [
        (
            "[glance_store]\nstores = rbd\ndefault_store = rbd\nrbd_store_pool = gl-images\n"
            "rbd_store_user = glance-c\nrbd_store_ceph_conf = /etc/ceph/c.conf\n",
            "glance_store",
            None,
        ),
        (
            "[DEFAULT]\nenabled_backends = fs:file, ceph:rbd\n[glance_store]\ndefault_backend = fs\n"
            "[fs]\nfilesystem_store_datadir = /x\n[ceph]\nrbd_store_pool = gl-images\n"
            "rbd_store_user = glance-c\nrbd_store_ceph_conf = /etc/ceph/c.conf\n",
            "ceph",
            "ceph",
        ),
    ],
    ids=["single-store", "multi-store"],
)
def test_rbd_client_settings_follow_the_precedence(
    tmp_path: Path, text: str, section: str, store_id: str | None
) -> None:
    """Issue 11 item 1: --ceph-conf/--rbd-user/--rbd-pool: flag > env > ini > glance-api.conf's
    RBD store section ([glance_store], or the rbd backend's own section) > defaults."""
    conf = write(tmp_path / "glance-api.conf", text)
    ini = write(tmp_path / "recover.ini", "[recover]\nrbd_pool = ini-pool\n")
    defaults = resolve({}, environ={})
    assert (defaults.ceph_conf.value, defaults.rbd_user.value, defaults.rbd_pool.value) == (
        "/etc/ceph/ceph.conf", "glance", "images",
    )  # fmt: skip
    settings = resolve({"glance_conf": conf}, environ={})
    assert (settings.ceph_conf, settings.rbd_user, settings.rbd_pool) == (
        Value("/etc/ceph/c.conf", f"{conf} [{section}] rbd_store_ceph_conf"),
        Value("glance-c", f"{conf} [{section}] rbd_store_user"),
        Value("gl-images", f"{conf} [{section}] rbd_store_pool"),
    )
    assert settings.rbd_store_id == store_id
    layered = resolve(
        {"glance_conf": conf, "config": ini, "ceph_conf": "/flag.conf"},
        environ={"RECOVER_RBD_USER": "env-user", "RECOVER_RBD_POOL": "env-pool"},
    )
    assert (layered.ceph_conf, layered.rbd_user, layered.rbd_pool) == (
        Value("/flag.conf", "--ceph-conf"),
        Value("env-user", "RECOVER_RBD_USER"),
        Value("env-pool", "RECOVER_RBD_POOL"),
    )
    assert resolve({"glance_conf": conf, "config": ini}, environ={}).rbd_pool == Value(
        "ini-pool", f"{ini} [recover] rbd_pool"
    )


def test_nova_rbd_pool_comes_from_nova_conf_when_its_disks_are_rbd(tmp_path: Path) -> None:
    """Where the inventory counts the clones of Glance's images (issue 11 item 4)."""
    assert resolve({}, environ={}).nova_rbd_pool == "vms"
    rbd = write(tmp_path / "rbd.conf", "[libvirt]\nimages_type = rbd\nimages_rbd_pool = ephem\n")
    assert resolve({"nova_conf": rbd}, environ={}).nova_rbd_pool == "ephem"
    unset = write(tmp_path / "unset.conf", "[libvirt]\nimages_type = rbd\n")
    assert resolve({"nova_conf": unset}, environ={}).nova_rbd_pool == "rbd"  # nova's default
    qcow2 = write(tmp_path / "qcow2.conf", "[libvirt]\nimages_type = qcow2\n")
    assert resolve({"nova_conf": qcow2}, environ={}).nova_rbd_pool == "vms"
