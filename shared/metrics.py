"""Every Prometheus metric of giapranh, declared once. Base units: seconds, `_total` counters.

Dashboards and alert rules must use exactly these names. Each process exposes the default
registry on its `/metrics` endpoint.
"""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- ingest
HTTP_REQUESTS = Counter(
    "giapranh_http_requests_total", "HTTP requests served, by service, route and status.",
    ["service", "route", "method", "status"],
)
HTTP_REJECTIONS = Counter(
    "giapranh_http_rejections_total", "Requests refused, by service and reason (error code).",
    ["service", "reason"],
)
EVENTS_ACCEPTED = Counter(
    "giapranh_ingest_events_accepted_total", "Events accepted into the outbox, by type.", ["type"]
)
GROUP_COMMIT_SIZE = Histogram(
    "giapranh_ingest_group_commit_reports", "Single reports written per transaction "
    "(group commit).", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 500),
)
OUTBOX_RELAYED = Counter(
    "giapranh_outbox_relayed_total", "Outbox rows published to Kafka by the relay."
)
OUTBOX_RELAY_ERRORS = Counter(
    "giapranh_outbox_relay_errors_total", "Relay rounds that failed and will be retried."
)
OUTBOX_BACKLOG = Gauge(
    "giapranh_outbox_backlog", "Outbox rows not yet published to Kafka (last relay round)."
)
OUTBOX_OLDEST_AGE = Gauge(
    "giapranh_outbox_oldest_age_seconds",
    "Age of the oldest outbox row not yet published (0 when none; last relay round).",
)

DATABASE_HISTORY_CHANGED = Gauge(
    "giapranh_database_history_changed",
    "1 once the database's history (system identifier, WAL timeline) differs from the one "
    "the service started with: restored to a point in time or replaced (read by /readyz).",
    ["service"],
)

SIGHTINGS_PURGED = Counter(
    "giapranh_ingest_sightings_purged_total",
    "Unmatched sightings whose subject was removed after the retention period.",
)
OUTBOX_REDRIVEN = Counter(
    "giapranh_outbox_redriven_total",
    "Published events queued for publishing again, by reason (no_verdict: the matcher gave "
    "none in time; log_lost: the broker lost its log).", ["reason"],
)
REPORTS_WITHOUT_VERDICT = Gauge(
    "giapranh_reports_without_verdict",
    "Published reports and watchlist changes that the matcher has not confirmed after the "
    "grace period (last reconciliation round).",
)
REPORTS_WITHOUT_VERDICT_AGE = Gauge(
    "giapranh_reports_without_verdict_oldest_age_seconds",
    "Age of the oldest published report or watchlist change still without a verdict "
    "(0 when none).",
)
REPORTS_STUCK = Gauge(
    "giapranh_reports_stuck",
    "Published reports and watchlist changes still without a verdict after every redrive.",
)

# --- matcher
MATCHER_EVENTS = Counter(
    "giapranh_matcher_events_total", "Sightings and incidents matched, by event type.", ["type"]
)
HITS = Counter(
    "giapranh_hits_total", "Hits emitted, by watchlist category and live/late.",
    ["category", "mode"],
)
MATCH_SECONDS = Histogram(
    "giapranh_match_seconds", "Engine time to match one reported subject.",
    buckets=(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01),
)
MATCH_CANDIDATES = Histogram(
    "giapranh_match_candidates", "Watchlist entries scored for one reported subject.",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500),
)
WATCHLIST_SIZE = Gauge(
    "giapranh_watchlist_entries", "Active watchlist entries held by this matcher, by category.",
    ["category"],
)

HITS_REDRIVEN = Counter(
    "giapranh_hits_redriven_total",
    "Hits published again because no alert existed for them, by reason (no_alert, "
    "log_lost).", ["reason"],
)
HITS_UNDELIVERED = Gauge(
    "giapranh_hits_undelivered",
    "Hits emitted longer ago than the grace period with no alert yet (last round).",
)
HITS_STUCK = Gauge(
    "giapranh_hits_stuck", "Hits still without an alert after every redrive (last round).",
)
WITHDRAWALS_REDRIVEN = Counter(
    "giapranh_withdrawals_redriven_total",
    "HitsWithdrawn published again because a cancelled entry still had open alerts.",
)
HITS_CAPPED = Counter(
    "giapranh_hits_capped_total",
    "Hits not raised because more look-alike entries of one unit matched one reported "
    "subject than the cap (a flood of copies), by live/late.", ["mode"],
)
OVERSIZED_BUCKETS = Counter(
    "giapranh_matcher_oversized_buckets_total",
    "Index buckets over the engine's bucket size met by queries (narrowed, never skipped).",
)

# --- notifier
ALERTS_RAISED = Counter("giapranh_alerts_raised_total", "Alerts created from new hits.")
DELIVERIES = Counter(
    "giapranh_deliveries_total",
    "Alert deliveries, by channel (store, sse, webhook) and result (ok, failed, dead).",
    ["channel", "result"],
)
ALERTS_BY_UNIT = Counter(
    "giapranh_alerts_delivered_total",
    "Alerts addressed to a unit when raised or escalated, by recipient unit.", ["unit"],
)
SIGHTING_TO_DELIVERY = Histogram(
    "giapranh_sighting_to_delivery_seconds",
    "Time from a sighting's recording at ingest to a new alert reaching a desk, by channel.",
    ["channel"], buckets=LATENCY_BUCKETS,
)
WORKFLOW_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200)
TIME_TO_ACKNOWLEDGE = Histogram(
    "giapranh_time_to_acknowledge_seconds",
    "Time from an alert's delivery to a unit until that unit acknowledged it.",
    buckets=WORKFLOW_BUCKETS,
)
TIME_TO_CONFIRM = Histogram(
    "giapranh_time_to_confirm_seconds",
    "Time from an alert being raised until the listing unit confirmed or rejected it.",
    ["urgency"], buckets=WORKFLOW_BUCKETS,
)
ALERT_ACTIONS = Counter(
    "giapranh_alert_actions_total",
    "Workflow steps taken on alerts (acknowledged, confirmed, rejected, closed, withdrawn, "
    "escalated).", ["action"],
)
OVERDUE_ALERTS = Gauge(
    "giapranh_alerts_overdue",
    "Alerts past a confirmation deadline and still unconfirmed (last deadline check).",
)
WEBHOOK_FAILURES = Counter(
    "giapranh_webhook_failures_total",
    "Webhook attempts that failed (will be retried unless dead-lettered), by reason.",
    ["reason"],
)
WEBHOOK_PENDING = Gauge(
    "giapranh_webhook_pending", "Webhook deliveries waiting for a (re)try (last dispatch round)."
)
CHECKS = Counter(
    "giapranh_checks_total",
    "Checks of a person, id or plate (POST /v1/checks), by result: hit, clear, unavailable.",
    ["result"],
)
CHECK_SECONDS = Histogram(
    "giapranh_check_seconds", "Time to answer a check, matcher round trip included.",
    buckets=LATENCY_BUCKETS,
)
INCIDENTS_REPLAYED = Counter(
    "giapranh_incident_events_replayed_total",
    "Incident events the notifier never received from the broker and handled from ingest's "
    "record instead.",
)
SIGHTING_TO_ALERT = Histogram(
    "giapranh_sighting_to_alert_seconds",
    "Time from a sighting's recording at ingest to its alert being stored.",
    buckets=LATENCY_BUCKETS,
)

# --- every consumer (shared.stream)
CONSUMER_LAG = Gauge(
    "giapranh_consumer_lag",
    "Messages between a stream's position and the end of the partitions it holds, by stream.",
    ["stream"],
)
STREAM_BATCH_MESSAGES = Histogram(
    "giapranh_stream_batch_messages", "Records per batch a stream handled, by stream.",
    ["stream"], buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
STREAM_BATCH_SECONDS = Histogram(
    "giapranh_stream_batch_seconds",
    "Time from a batch's poll until it was delivered and committed, by stream.",
    ["stream"], buckets=LATENCY_BUCKETS,
)
LOG_LOSSES = Counter(
    "giapranh_log_losses_total",
    "Times a service found that the broker had lost a topic's log, by service and topic.",
    ["service", "topic"],
)
STREAM_RESTARTS = Counter(
    "giapranh_stream_restarts_total",
    "Times a stream dropped its broker clients after a failure and reconnected, by stream.",
    ["stream"],
)
DEAD_LETTERS = Counter(
    "giapranh_dead_letters_total", "Messages parked on the dead-letter topic.",
    ["service", "topic"],
)
