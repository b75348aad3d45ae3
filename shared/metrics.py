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
STREAM_RESTARTS = Counter(
    "giapranh_stream_restarts_total",
    "Times a stream dropped its broker clients after a failure and reconnected, by stream.",
    ["stream"],
)
DEAD_LETTERS = Counter(
    "giapranh_dead_letters_total", "Messages parked on the dead-letter topic.",
    ["service", "topic"],
)
