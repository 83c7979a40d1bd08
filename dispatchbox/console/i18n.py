"""The console's two languages, English and Polish: every text a page shows, by key.

The language is the ``dispatchbox_lang`` cookie (the switch in the page header sets it), else
the first of English or Polish the browser's Accept-Language prefers, else English.
"""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("en", "pl")

MESSAGES: dict[str, tuple[str, str]] = {
    # key: (English, Polish)
    "title": ("dispatchbox console", "konsola dispatchbox"),
    "nav.overview": ("Overview", "Przegląd"),
    "nav.dead": ("Dead events", "Martwe zdarzenia"),
    "nav.audit": ("Audit trail", "Dziennik audytu"),
    "nav.logout": ("Sign out", "Wyloguj"),
    "signed_in_as": ("Signed in as", "Zalogowano jako"),
    "role.operator": ("operator", "operator"),
    "role.reader": ("reader (read-only)", "czytelnik (tylko odczyt)"),
    "login.title": ("Sign in", "Logowanie"),
    "login.token": ("API token", "Token API"),
    "login.help": (
        "A token of DISPATCHBOX_API_TOKEN (name:secret). It is checked once and never shown.",
        "Token z DISPATCHBOX_API_TOKEN (nazwa:sekret). Sprawdzamy go raz i nigdzie nie pokazujemy.",
    ),
    "login.submit": ("Sign in", "Zaloguj"),
    "login.bad": ("That token is not valid.", "Ten token jest nieprawidłowy."),
    "login.disabled": (
        "The console needs DISPATCHBOX_API_TOKEN: this server runs without tokens.",
        "Konsola wymaga DISPATCHBOX_API_TOKEN, a ten serwer działa bez tokenów.",
    ),
    "state.pending": ("Pending", "Oczekujące"),
    "state.running": ("Running", "W trakcie"),
    "state.dead": ("Dead", "Martwe"),
    "oldest_pending": ("Oldest pending", "Najstarsze oczekujące"),
    "estimated": (
        "Estimated from the planner's statistics: more than 10,000 events",
        "Szacunek ze statystyk planisty: ponad 10 000 zdarzeń",
    ),
    "expired_leases": ("Expired leases", "Wygasłe dzierżawy"),
    "oldest_dead": ("Oldest dead since", "Najstarsze martwe od"),
    "deaths_chart": (
        "Deaths in the last 24 hours (events still dead)",
        "Nowe martwe zdarzenia w ostatnich 24 godzinach (te, które wciąż są martwe)",
    ),
    "by_type": ("Dead by event type", "Martwe według typu zdarzenia"),
    "by_destination": ("Dead by destination", "Martwe według miejsca docelowego"),
    "destination.unknown": ("not recorded", "nie zapisano"),
    "destinations.sampled": ("of the newest {n}", "spośród {n} najnowszych"),
    "by_error": ("Dead by error", "Martwe według błędu"),
    "breakers": ("Circuit breakers", "Bezpieczniki"),
    "breakers.none": (
        "Circuit breakers are not available in this installation.",
        "Bezpieczniki nie są dostępne w tej instalacji.",
    ),
    "breakers.empty": ("No breaker has tripped.", "Żaden bezpiecznik nie zadziałał."),
    "breaker.open": ("Open", "Otwórz"),
    "breaker.close": ("Close", "Zamknij"),
    "live": ("Refreshes every 5 seconds", "Odświeża się co 5 sekund"),
    "col.id": ("ID", "ID"),
    "col.type": ("Event type", "Typ zdarzenia"),
    "col.aggregate": ("Aggregate", "Agregat"),
    "col.count": ("Count", "Liczba"),
    "col.first": ("First seen", "Pierwszy raz"),
    "col.last": ("Last seen", "Ostatni raz"),
    "col.error": ("Error", "Błąd"),
    "col.example": ("Example error", "Przykładowy błąd"),
    "col.targets": ("Hits", "Dotyczy"),
    "col.destination": ("Destination", "Miejsce docelowe"),
    "col.destinations": ("Destinations", "Miejsca docelowe"),
    "col.dead_at": ("Died", "Martwe od"),
    "col.attempts": ("Attempts", "Próby"),
    "col.redrives": ("Redrives", "Przywrócenia"),
    "col.name": ("Name", "Nazwa"),
    "col.state": ("State", "Stan"),
    "col.since": ("Since", "Od"),
    "col.when": ("When", "Kiedy"),
    "col.actor": ("Who", "Kto"),
    "col.action": ("Action", "Operacja"),
    "col.affected": ("Events", "Zdarzenia"),
    "col.outcome": ("Outcome", "Wynik"),
    "col.details": ("Details", "Szczegóły"),
    "filter.event_type": ("Event type", "Typ zdarzenia"),
    "filter.aggregate_type": ("Aggregate type", "Typ agregatu"),
    "filter.destination": ("Destination", "Miejsce docelowe"),
    "filter.since": ("Died since", "Martwe od"),
    "filter.until": ("Died before", "Martwe przed"),
    "filter.error_contains": ("Error contains", "Błąd zawiera"),
    "filter.error_fingerprint": ("Error fingerprint", "Odcisk błędu"),
    "filter.apply": ("Filter", "Filtruj"),
    "filter.clear": ("Clear", "Wyczyść"),
    "view.events": ("Events", "Zdarzenia"),
    "view.groups": ("Grouped by error", "Grupowane według błędu"),
    "matching": ("dead events match", "martwych zdarzeń pasuje"),
    "next_page": ("Next page", "Następna strona"),
    "first_page": ("First page", "Pierwsza strona"),
    "none_found": ("No dead events match.", "Żadne martwe zdarzenie nie pasuje."),
    "retry_filter": ("Retry all matching…", "Przywróć wszystkie pasujące…"),
    "retry_group": ("Retry group…", "Przywróć grupę…"),
    "purge_filter": ("Purge matching…", "Archiwizuj pasujące…"),
    "event.title": ("Event", "Zdarzenie"),
    "event.summary": ("Summary", "Podsumowanie"),
    "event.status": ("Status", "Status"),
    "event.checksum": ("Payload checksum (sha256)", "Suma kontrolna danych (sha256)"),
    "event.payload": ("Payload", "Dane (payload)"),
    "event.headers": ("Headers", "Nagłówki"),
    "event.attempts": ("Attempt history", "Historia prób"),
    "event.no_errors": ("No failed attempt recorded.", "Brak zapisanych nieudanych prób."),
    "event.lineage": ("Redrive lineage", "Historia przywróceń"),
    "event.redriven": (
        "Redrives: {n}; the last by {who} at {when}.",
        "Przywrócenia: {n}; ostatnie: {who}, {when}.",
    ),
    "event.never_redriven": ("Never redriven.", "Nigdy nie przywracane."),
    "event.audit": ("Audit entries", "Wpisy w dzienniku audytu"),
    "event.no_audit": (
        "No audit entry names this event.",
        "Żaden wpis w dzienniku audytu nie dotyczy tego zdarzenia.",
    ),
    "event.traceback": ("Traceback", "Ślad stosu"),
    "event.redacted": ("(hidden for your role)", "(ukryte dla Twojej roli)"),
    "action.retry": ("Retry now", "Przywróć teraz"),
    "action.edit": ("Edit payload and redrive", "Popraw dane i przywróć"),
    "action.edit_help": (
        "Valid JSON. The change is kept in the audit trail as a diff.",
        "Poprawny JSON. Zmiana trafia do dziennika jako różnica.",
    ),
    "action.save_redrive": ("Save and redrive", "Zapisz i przywróć"),
    "confirm.retry_title": ("Retry dead events", "Przywracanie martwych zdarzeń"),
    "confirm.purge_title": ("Purge dead events", "Archiwizowanie martwych zdarzeń"),
    "confirm.dry_run": (
        "Dry run: {n} dead events match now.",
        "Próba na sucho: pasuje teraz {n} martwych zdarzeń.",
    ),
    "confirm.conflicts": (
        "Conflicts (redriving these may replay what is superseded, or out of order):",
        "Konflikty (przywrócenie może odtworzyć coś już zastąpionego albo złamać kolejność):",
    ),
    "conflict.aggregate_moved_on": (
        "{n} of an aggregate that moved on (a newer event of it is done), e.g. {ids}",
        "{n} z agregatu, który poszedł dalej (jego nowsze zdarzenie jest done), np. {ids}",
    ),
    "conflict.idempotency_key_taken": (
        "{n} with an idempotency key a newer event holds, e.g. {ids}",
        "{n} z kluczem idempotencji, który ma nowsze zdarzenie, np. {ids}",
    ),
    "conflict.behind_dead_event": (
        "{n} behind a dead event the filter leaves out (they would overtake it), e.g. {ids}",
        "{n} za martwym zdarzeniem, które filtr pomija (wyprzedziłyby je), np. {ids}",
    ),
    "confirm.rate": ("At most this many events a second", "Najwyżej tyle zdarzeń na sekundę"),
    "confirm.limit": ("At most this many events in all", "Najwyżej tyle zdarzeń łącznie"),
    "confirm.older": (
        "Only those dead for at least this many days",
        "Tylko te, które są martwe od co najmniej tylu dni",
    ),
    "confirm.purge_help": (
        "Purge moves dead events to the archive (as `dead-events purge` does): "
        "they can no longer be retried.",
        "Archiwizowanie przenosi martwe zdarzenia do archiwum (jak `dead-events purge`): "
        "potem nie da się ich przywrócić.",
    ),
    "confirm.go_retry": ("Retry them", "Przywróć je"),
    "confirm.go_purge": ("Purge them", "Zarchiwizuj je"),
    "confirm.cancel": ("Cancel", "Anuluj"),
    "done.retried": (
        "{n} events sent back to pending.",
        "Przywrócono {n} zdarzeń (znów są pending).",
    ),
    "done.retried_one": (
        "Event {id} sent back to pending.",
        "Zdarzenie {id} przywrócone (znów jest pending).",
    ),
    "done.edited": (
        "Event {id}: payload saved and event sent back to pending.",
        "Zdarzenie {id}: dane zapisane, zdarzenie przywrócone (znów jest pending).",
    ),
    "done.purged": (
        "{n} dead events moved to the archive.",
        "Przeniesiono do archiwum {n} martwych zdarzeń.",
    ),
    "done.breaker": ("Breaker {name}: {state}.", "Bezpiecznik {name}: {state}."),
    "back": ("Back", "Wróć"),
    "error.title": ("Something is wrong", "Coś jest nie tak"),
    "error.csrf": (
        "This form was rejected: its security token is missing or stale. "
        "Reload the page and submit it again.",
        "Formularz odrzucony: brak tokenu bezpieczeństwa albo jest nieaktualny. "
        "Odśwież stronę i wyślij go ponownie.",
    ),
    "error.login": (
        "Sign in first: this form needs a session.",
        "Najpierw się zaloguj: ten formularz wymaga sesji.",
    ),
    "error.forbidden": (
        "Your role may only look: this action needs an operator's token.",
        "Twoja rola pozwala tylko oglądać: ta operacja wymaga tokenu operatora.",
    ),
    "error.redacted": (
        "Your token sees this payload masked, so it may not edit it: use a token named in "
        "DISPATCHBOX_PAYLOAD_ROLES.",
        "Twój token widzi ten ładunek zamaskowany, więc nie może go edytować: użyj tokenu "
        "wymienionego w DISPATCHBOX_PAYLOAD_ROLES.",
    ),
    "error.not_found": ("No event with id {id}.", "Nie ma zdarzenia o id {id}."),
    "error.not_dead": (
        "Event {id} is not dead, so nothing changed.",
        "Zdarzenie {id} nie jest martwe, więc nic nie zmieniono.",
    ),
    "error.json": (
        "The payload is not valid JSON: {reason}",
        "Dane nie są poprawnym JSON-em: {reason}",
    ),
    "error.filter": ("Bad filter: {reason}", "Zły filtr: {reason}"),
    "error.number": (
        "{field} must be a whole number from {low} to {high}.",
        "{field} musi być liczbą całkowitą od {low} do {high}.",
    ),
    "error.database": (
        "The database is unavailable; try again shortly.",
        "Baza danych jest niedostępna; spróbuj za chwilę.",
    ),
    "error.internal": (
        "Something failed on the server; it is in the server's log.",
        "Coś zawiodło po stronie serwera; szczegóły są w logu serwera.",
    ),
    "error.no_breakers": (
        "Circuit breakers are not available in this installation.",
        "Bezpieczniki nie są dostępne w tej instalacji.",
    ),
    "error.unknown_breaker": ("No breaker named {name}.", "Nie ma bezpiecznika {name}."),
    "audit.title": ("Latest operator actions", "Ostatnie operacje w dzienniku audytu"),
    "lang.switch": ("Polski", "English"),
}


def pick(cookie: str | None, accept_language: str | None) -> str:
    """The page language: the switch's cookie, else Accept-Language, else English."""
    if cookie in LANGUAGES:
        return str(cookie)
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            ranked.append((-quality, position, primary))
    return min(ranked)[2] if ranked else "en"


def translator(lang: str) -> Callable[..., str]:
    """``t(key, **values)`` in one language; an unknown key shows as itself (a bug to see)."""
    index = LANGUAGES.index(lang) if lang in LANGUAGES else 0

    def t(key: str, **values: object) -> str:
        pair = MESSAGES.get(key)
        text = pair[index] if pair else key
        return text.format(**values) if values else text

    return t
