"""The Proxmox VE API layer: connection settings, requests, retries and tasks.

The only module that talks HTTP, and it does so through proxmoxer: a
``ProxmoxAPI`` with the https backend, its session and its auth classes.
Every error answer (proxmoxer's ``ResourceException``) or failed connection
leaves here as :class:`~psa_infra.errors.ProxmoxError` (or
:class:`~psa_infra.errors.TaskError` for a failed task), naming the method,
the path, PVE's message and its per-parameter errors; no proxmoxer or
requests exception and no secret (token secret, password, ticket) leaves it.

Where proxmoxer falls short, this module keeps control:

- Login. ``ProxmoxHTTPAuth`` logs in from its constructor with a bare
  ``requests.post`` outside the session, which trusts ``REQUESTS_CA_BUNDLE``
  (it replaces ``verify=True``), proxy variables and ``~/.netrc``, is never
  retried, drops PVE's message, and answers ``NeedTFA`` with a made-up
  second factor that counts as a failed attempt. So the login goes through
  proxmoxer's session like every other request (``trust_env`` off, the
  explicit ``verify``, retries), and the ticket is handed to a
  ``ProxmoxHTTPAuth`` made without its constructor, its age-based renewal
  (the same ``requests.post``) off: a 401 renews the ticket instead.
  ``ProxmoxAPI`` is built as for a token, the one way it sends nothing.
- Trust. The session ignores the environment, so only the CA file, the
  default bundle of requests or ``--insecure`` decide whom credentials go
  to. An answer that redirects is refused: proxmoxer's session would follow
  it with the ticket cookie, which is bound to no host. The session stores
  no cookie from answers, as any stored cookie stops proxmoxer sending the
  ticket.
- Retries, lost answers and task polling are done here: proxmoxer retries
  nothing, and ``Tasks.blocking_status`` sleeps a full interval even for a
  finished task and returns without raising when it failed.
- Importing proxmoxer's https backend would silence urllib3's warnings for
  the whole process; the import is fenced. proxmoxer's loggers, which log
  parameter values, stay at the WARNING level it sets; the DEBUG line here
  names parameters only.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ProxmoxError, TaskError
from .pvesettings import Settings

log = logging.getLogger(__name__)

# A proxy in front of PVE (502-504) or pveproxy failing to reach another node
# (595 no route, 596 connection broken) answers these; the request may be
# repeated once it is known to be safe.
TRANSIENT_STATUS = frozenset({502, 503, 504, 595, 596})


@dataclass
class TaskResult:
    """How a Proxmox task ended."""

    upid: str
    exitstatus: str
    warnings: list[str] = field(default_factory=list)


class _Transient(Exception):
    """A failure that may pass: the connection broke or a proxy answered 5xx."""

    def __init__(self, why: str, sent: bool) -> None:
        super().__init__(why)
        self.why = why
        # False only when the request certainly never reached the server.
        self.sent = sent


def upid_node(upid: str) -> str:
    """The node a task runs on, from its UPID (``UPID:node:...``)."""
    parts = upid.split(":")
    if len(parts) < 3 or parts[0] != "UPID":
        raise ProxmoxError(
            f"the API answered {upid!r} where a task id (UPID) was expected"
        )
    return parts[1]


def _task_type(upid: str) -> str:
    parts = upid.split(":")
    return f"{parts[5]} {parts[6]}".strip() if len(parts) > 6 else upid


class Client:
    """A connection to the Proxmox API through proxmoxer, shared by threads."""

    def __init__(
        self,
        settings: Settings,
        sleep: Callable[[float], None] = time.sleep,
        pool_size: int = 16,
    ) -> None:
        from http.cookiejar import DefaultCookiePolicy

        import requests.adapters
        import urllib3

        https = _proxmoxer_https()
        from proxmoxer import ProxmoxAPI

        self.settings = settings
        self._sleep = sleep
        self._lock = threading.Lock()
        parts = urlsplit(settings.url)
        if settings.token_id:
            assert settings.token_secret is not None
            user, _, token_name = settings.token_id.partition("!")
            token_value: str | None = settings.token_secret.reveal()
        else:
            # ProxmoxAPI logs a user in from its constructor (see the module
            # docstring); built as for a token it sends nothing, and its
            # session's auth is replaced below before any request.
            user, token_name, token_value = str(settings.user), "", None
        self.api: Any = ProxmoxAPI(
            parts.hostname,
            backend="https",
            port=parts.port,
            user=user,
            token_name=token_name,
            token_value=token_value,
            verify_ssl=settings.verify,
            timeout=settings.timeout,
        )
        self.session: Any = self.api._store["session"]
        self.base: str = self.api._store["base_url"]

        # REQUESTS_CA_BUNDLE, netrc and proxy variables would silently change
        # whom we trust and where the credentials go; only the settings count.
        self.session.trust_env = False
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.session.hooks["response"].append(_refuse_redirect)
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=pool_size, max_retries=0
        )
        self.session.mount("https://", adapter)
        # The login itself carries no ticket: proxmoxer's base auth adds nothing.
        self._anonymous = https.ProxmoxHTTPAuthBase(
            timeout=settings.timeout, verify_ssl=settings.verify
        )
        if not settings.token_id:
            self.session.auth = _ticket_auth(https, settings, self.base)
        if settings.insecure:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    # ------------------------------------------------------------ requests

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """Read ``path``; retried on transient failures."""
        return self._call("GET", path, params=params, retry=True)

    def put(
        self,
        path: str,
        data: Mapping[str, Any],
        resolve: Callable[[float], Any] | None = None,
    ) -> Any:
        """Set values at ``path``; retried, as setting the same values twice is safe.

        A PUT that starts a task (a resize) is not: give ``resolve`` as for
        :meth:`post`.
        """
        if resolve is not None:
            return self._call("PUT", path, data=data, retry=False, resolve=resolve)
        return self._call("PUT", path, data=data, retry=True)

    def post(
        self,
        path: str,
        data: Mapping[str, Any] | None = None,
        resolve: Callable[[float], Any] | None = None,
    ) -> Any:
        """Send a request that must not run twice.

        When its answer is lost, ``resolve(sent_at)`` reads the cluster back:
        it returns what the request returned (a UPID) when the request did
        take effect, or None when it did not, and only then is it sent again.
        Without ``resolve`` a lost answer is an error.
        """
        return self._call("POST", path, data=data, retry=False, resolve=resolve)

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """Delete ``path`` (a destroy that is repeated fails, so it is not retried)."""
        return self._call("DELETE", path, params=params, retry=False)

    def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        retry: bool = True,
        resolve: Callable[[float], Any] | None = None,
    ) -> Any:
        attempts = self.settings.retries + 1
        last = ""
        for attempt in range(attempts):
            sent_at = time.time()
            try:
                return self._once(method, path, params or data or {})
            except _Transient as exc:
                last = exc.why
                if not retry and exc.sent:
                    if resolve is None:
                        raise ProxmoxError(
                            f"{method} {path}: the answer was lost ({exc.why}); "
                            "the request may or may not have taken effect",
                            hint="check the cluster, then run psa-infra again",
                        ) from None
                    done = resolve(sent_at - 2)
                    if done is not None:
                        log.info(
                            "%s %s took effect although its answer was lost",
                            method,
                            path,
                        )
                        return done
                if attempt + 1 < attempts:
                    delay = self.settings.backoff * 2**attempt
                    delay *= 1 + random.random() / 2
                    log.warning(
                        "%s %s: %s; trying again in %.1f s",
                        method,
                        path,
                        exc.why,
                        delay,
                    )
                    self._sleep(delay)
        raise ProxmoxError(
            f"{method} {path} failed {attempts} times; last: {last}",
            hint=f"check that {self.settings.url} and its nodes are reachable",
        )

    def _once(self, method: str, path: str, values: Mapping[str, Any]) -> Any:
        """Send one request through proxmoxer (GET, DELETE: values in the query)."""
        import requests
        from proxmoxer import ResourceException

        send = getattr(self.api(path), method.lower())
        relogged = False
        while True:
            ticket = "" if self.settings.token_id else self._login()
            started, status = time.monotonic(), "no answer"
            try:
                result = send(**_encode(values))
                status = "ok"
            except ResourceException as exc:
                code: int = exc.status_code
                status = str(code)
                if code == 401 and ticket and not relogged:
                    # The ticket expired or was revoked: log in again, once.
                    self._forget(ticket)
                    relogged = True
                    continue
                if code in TRANSIENT_STATUS:
                    why = f"{code} {_reason_phrase(exc) or exc.status_message}"
                    raise _Transient(why, sent=True) from None
                raise self._api_error(method, path, exc) from None
            except requests.exceptions.SSLError as exc:
                raise self._tls_error(exc) from None
            except requests.exceptions.ConnectTimeout:
                raise _Transient("connection timed out", sent=False) from None
            except requests.exceptions.ConnectionError as exc:
                # A refused connection never carried the request; a reset may have.
                sent = "refused" not in str(exc).lower()
                raise _Transient(_reason(exc), sent=sent) from None
            except (
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ):
                raise _Transient("no answer in time", sent=True) from None
            except KeyError:
                # proxmoxer reads the answer's "data" without checking it is there.
                raise ProxmoxError(
                    f"{method} {path}: the API answered without a data field"
                ) from None
            finally:
                log.debug(
                    "%s %s %s -> %s (%.2f s)",
                    method,
                    path,
                    sorted(values),
                    status,
                    time.monotonic() - started,
                )
            # proxmoxer returns a body that is not JSON as {"errors": bytes}.
            if isinstance(result, dict) and isinstance(result.get("errors"), bytes):
                raise ProxmoxError(f"{method} {path}: the API answered with no JSON")
            return result

    def _login(self) -> str:
        """The ticket proxmoxer's auth sends: logged in once, shared by the threads."""
        import requests

        auth = self.session.auth
        with self._lock:
            if auth.pve_auth_ticket:
                return str(auth.pve_auth_ticket)
            assert self.settings.user is not None and self.settings.password is not None
            for attempt in range(self.settings.retries + 1):
                try:
                    response = self.session.request(
                        "POST",
                        self.base + "/access/ticket",
                        data={
                            "username": self.settings.user,
                            "password": self.settings.password.reveal(),
                        },
                        auth=self._anonymous,
                        timeout=self.settings.timeout,
                        verify=self.settings.verify,
                        allow_redirects=False,
                    )
                except requests.exceptions.SSLError as exc:
                    raise self._tls_error(exc) from None
                except requests.exceptions.RequestException as exc:
                    why = _reason(exc)
                else:
                    if response.status_code not in TRANSIENT_STATUS:
                        break
                    why = f"{response.status_code} {response.reason}"
                if attempt == self.settings.retries:
                    raise ProxmoxError(
                        f"cannot log in to {self.settings.url}: {why}",
                        hint=f"check that {self.settings.url} is reachable",
                    )
                self._sleep(self.settings.backoff * 2**attempt)
            if response.status_code != 200:
                raise ProxmoxError(
                    f"login as {self.settings.user} to {self.settings.url} failed: "
                    f"{response.status_code} {_message(response) or response.reason}",
                    hint="check PROXMOX_USER and PROXMOX_PASSWORD (or use a token)",
                )
            try:
                body = response.json()["data"]
            except (ValueError, LookupError, TypeError):
                body = None
            if not isinstance(body, dict):
                body = {}
            if body.get("NeedTFA"):
                raise ProxmoxError(
                    f"user {self.settings.user} needs a second factor, which psa-infra "
                    "cannot give",
                    hint="use an API token (PROXMOX_TOKEN_ID, PROXMOX_TOKEN_SECRET)",
                )
            if not (body.get("ticket") and body.get("CSRFPreventionToken")):
                raise ProxmoxError(
                    f"login as {self.settings.user} to {self.settings.url}: the API "
                    "answered without a ticket"
                )
            auth.csrf_prevention_token = body["CSRFPreventionToken"]
            auth.birth_time = time.monotonic()
            auth.pve_auth_ticket = body["ticket"]
            return str(auth.pve_auth_ticket)

    def _forget(self, ticket: str) -> None:
        """Drop a ticket PVE refused, unless another thread has replaced it already."""
        with self._lock:
            if self.session.auth.pve_auth_ticket == ticket:
                self.session.auth.pve_auth_ticket = ""

    def _tls_error(self, exc: Exception) -> ProxmoxError:
        return ProxmoxError(
            f"the TLS certificate of {self.settings.url} could not be verified: "
            f"{_reason(exc)}",
            hint="give the CA that signed it with --ca-file or PROXMOX_CA_FILE; "
            "--insecure turns verification off (not for production)",
        )

    def _api_error(self, method: str, path: str, exc: Any) -> ProxmoxError:
        """Translate proxmoxer's ResourceException."""
        status = exc.status_code
        message = _reason_phrase(exc) or exc.status_message or "no message"
        text = f"{method} {path}: {status} {message}"
        errors = exc.errors if isinstance(exc.errors, dict) else {}
        # A body that is not JSON comes as {"errors": bytes}: not parameters.
        text += "".join(
            f"\n  {name}: {str(why).strip()}"
            for name, why in sorted(errors.items())
            if isinstance(why, str)
        )
        hint = None
        if status == 401:
            hint = f"check the credentials of {self.settings.who}"
        elif status == 403:
            hint = f"grant {self.settings.who} the privilege named above"
        return ProxmoxError(text, hint=hint)

    # --------------------------------------------------------------- tasks

    def wait_task(
        self, upid: str, what: str, timeout: float, poll_max: float = 1.0
    ) -> TaskResult:
        """Wait for a task to end; raise TaskError with its log if it failed.

        The poll interval grows with the time already waited (a twentieth
        of it, at most ``poll_max``), so short tasks are seen promptly and
        long ones do not flood the API.
        """
        node = upid_node(upid)
        path = f"/nodes/{node}/tasks/{upid}/status"
        started = time.monotonic()
        while True:
            status = self.get(path)
            if status.get("status") == "stopped":
                break
            waited = time.monotonic() - started
            if waited >= timeout:
                raise TaskError(
                    f"{what}: task {_task_type(upid)} on {node} did not end within "
                    f"{timeout:g} s; it may still be running ({upid})",
                    hint="see the task in the Proxmox task log; raise --task-timeout "
                    "for slow storage",
                )
            self._sleep(min(max(waited / 40, 0.03), poll_max, timeout - waited))
        exitstatus = str(status.get("exitstatus") or "")
        if exitstatus == "OK":
            return TaskResult(upid, exitstatus)
        lines = self.task_log(upid)
        if exitstatus.startswith("WARNINGS"):
            warned = [line for line in lines if "warn" in line.lower()] or [exitstatus]
            return TaskResult(upid, exitstatus, warned)
        shown = "\n".join(f"    {line}" for line in lines[-20:])
        raise TaskError(
            f"{what}: task {_task_type(upid)} on {node} failed: {exitstatus}"
            + (f"\n  task log:\n{shown}" if shown else ""),
        )

    def task_log(self, upid: str) -> list[str]:
        """The last lines of a task's log."""
        node = upid_node(upid)
        try:
            entries = self.get(f"/nodes/{node}/tasks/{upid}/log", {"limit": 500})
        except ProxmoxError:
            return []
        return [str(e.get("t", "")) for e in entries or [] if isinstance(e, dict)]

    def close(self) -> None:
        """Close the connections."""
        self.session.close()


def _encode(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as PVE reads them from a form: booleans as 1 and 0."""
    return {k: (int(v) if isinstance(v, bool) else v) for k, v in values.items()}


def _proxmoxer_https() -> Any:
    """proxmoxer's https backend, imported without its process-wide side effect.

    Its import calls ``urllib3.disable_warnings()``, which would hide every
    urllib3 warning from then on; the warning filters are restored after it.
    """
    import sys
    import warnings

    if "proxmoxer.backends.https" not in sys.modules:
        with warnings.catch_warnings():
            import proxmoxer.backends.https  # noqa: F401
    return sys.modules["proxmoxer.backends.https"]


def _ticket_auth(https: Any, settings: Settings, base: str) -> Any:
    """proxmoxer's ticket auth, made without the login of its constructor.

    It holds no ticket until ``Client._login`` gives it one.
    """
    auth = https.ProxmoxHTTPAuth.__new__(https.ProxmoxHTTPAuth)
    https.ProxmoxHTTPAuthBase.__init__(
        auth, timeout=settings.timeout, verify_ssl=settings.verify
    )
    auth.base_url = base
    auth.username = settings.user
    auth.pve_auth_ticket = ""
    auth.csrf_prevention_token = ""
    auth.birth_time = time.monotonic()
    # Its renewal would log in with requests.post again; a 401 renews instead.
    auth.renew_age = math.inf
    return auth


def _refuse_redirect(response: Any, *args: Any, **kwargs: Any) -> Any:
    """Refuse an answer that redirects: the ticket cookie would follow it."""
    if 300 <= response.status_code < 400:
        path = urlsplit(response.url).path.removeprefix("/api2/json")
        where = response.headers.get("Location")
        response.close()
        raise ProxmoxError(
            f"{response.request.method} {path}: the API answered "
            f"{response.status_code}, a redirect{f' to {where}' if where else ''}; "
            "psa-infra follows none, as the credentials would go along",
            hint="set PROXMOX_URL to the address of the Proxmox API itself",
        )
    return response


def _reason_phrase(exc: Any) -> str:
    """PVE's message from its status line, where proxmoxer keeps it.

    PVE writes it in UTF-8; the HTTP client decoded it as Latin-1.
    """
    text = str(exc.content or "")
    try:
        text = text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass
    return text.strip()


def _message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    return str(body.get("message") or "").strip()


def _reason(exc: Exception) -> str:
    """A short reason for a connection failure, without library internals."""
    text = str(exc)
    for marker in (
        "Connection refused",
        "Connection reset by peer",
        "Remote end closed connection",
        "CERTIFICATE_VERIFY_FAILED",
        "certificate verify failed",
        "Name or service not known",
        "timed out",
    ):
        if marker.lower() in text.lower():
            return marker.lower()
    return type(exc).__name__
