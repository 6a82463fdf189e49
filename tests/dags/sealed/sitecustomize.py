"""Loaded by every Python process the DAG test starts (Airflow, spark-submit's driver,
Spark's workers, the tasks' commands) through PYTHONPATH: the same network seal as the
test process, so nothing they run reaches outside loopback."""

import socket

from tests.conftest import _sealed_connect, _sealed_connect_ex, _sealed_getaddrinfo

socket.socket.connect = _sealed_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _sealed_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _sealed_getaddrinfo
