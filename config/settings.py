"""Django settings, read from the environment.

With no environment at all this is the embedded profile: SQLite under var/, an in-memory channel layer and Celery
tasks run in-process. DATABASE_URL switches to PostgreSQL and REDIS_URL switches Channels and Celery to Redis (the
full profile). DEBUG is off unless DJANGO_DEBUG=true; PRODUCTION=true (a server others can reach) requires a
SECRET_KEY and ALLOWED_HOSTS and refuses DEBUG and the development wallets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_str

# Make generic Django classes (ModelAdmin[Model], QuerySet[Model], ...) subscriptable at run time for typing.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
VAR_DIR.mkdir(parents=True, exist_ok=True)

# Django's debug pages show the settings, a traceback and every URL pattern to whoever sent the request: off unless
# a developer turns them on. Errors are JSON `{code, message}` on the API either way (config/api.py).
DEBUG = env_bool("DJANGO_DEBUG", False)
# A server others can reach: no development conveniences (a key from the repository, Anvil's key, dev wallets).
# Off, the defaults suit one developer's machine, and ALLOWED_HOSTS answers only to localhost.
PRODUCTION = env_bool("PRODUCTION", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG shows settings and tracebacks to anyone: never with PRODUCTION")

# A dev key only off production: production must never run on a key that is in the repository.
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when PRODUCTION is true")
    SECRET_KEY = "django-insecure-dev-only-key-never-used-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",  # first, so that `runserver` serves ASGI (HTTP and WebSocket)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "market",
    "ledger",
    "verification",
    "worker_web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "worker_web.middleware.CrossOriginIsolationMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite (embedded profile) unless DATABASE_URL names another one. Connections are kept for
# DB_CONN_MAX_AGE seconds (checked before reuse): a job's runner stores every token from a worker thread, and
# opening a connection for each (Channels closes expired ones around every database_sync_to_async call) cost the
# server's event loop more than the store itself.
DATABASE_URL = env_str("DATABASE_URL")
CONN_MAX_AGE = env_int("DB_CONN_MAX_AGE", 60)
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=CONN_MAX_AGE, conn_health_checks=True)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "db.sqlite3"),
            "CONN_MAX_AGE": CONN_MAX_AGE,
            "CONN_HEALTH_CHECKS": True,
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads and processes (Daphne, eager Celery, commands) share the file: wait for the lock, don't fail.
    # A transaction takes the write lock when it begins (IMMEDIATE): a deferred one that read first and then writes
    # fails at once with "database is locked" when another process wrote meanwhile, whatever the timeout (WAL
    # cannot upgrade a stale snapshot). WAL lets readers proceed while a job's runner writes its tokens, and
    # synchronous=NORMAL makes each of those small commits cheap (durable at the next checkpoint: a power cut may
    # lose the last few, never corrupt).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# onnxruntime-web (the provider tab) and uPlot (the charts) come from npm (node_modules, `npm ci`): only the files
# the pages load (config/finders.py).
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "config.finders.OnnxRuntimeWebFinder",
    "config.finders.UPlotFinder",
]
LOGIN_URL = "sign-in"
LOGIN_REDIRECT_URL = "dashboard"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))

# Rate limits (config/throttling.py): "N/second|minute|hour|day", "off" for none. Per account for API use (token or
# session), per address for anonymous requests, failed token lookups, failed sign-ins (also per user name), and
# accounts made on the sign-up page (each gets the signup grant). Over the rate: 429 with Retry-After.
THROTTLE_RATES = {
    scope: None if rate.lower() == "off" else rate
    for scope, rate in {
        "user": env_str("THROTTLE_USER_RATE", "1200/minute"),
        "anon": env_str("THROTTLE_ANON_RATE", "120/minute"),
        "auth_failure": env_str("THROTTLE_AUTH_FAILURE_RATE", "20/minute"),
        "sign_in": env_str("THROTTLE_SIGN_IN_RATE", "10/minute"),
        "sign_up": env_str("THROTTLE_SIGN_UP_RATE", "10/hour"),
    }.items()
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "market.auth.TokenAuthentication",  # the default token and named ones (config/throttling.py counts failures)
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["config.throttling.UserRateThrottle", "config.throttling.AnonRateThrottle"],
    # JSON only, with bounds on size and nesting (config/api.py); the API takes no forms or uploads.
    "DEFAULT_PARSER_CLASSES": ["config.api.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_SCHEMA_CLASS": "config.schema.ErrorDocumentingSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Compute market API",
    "DESCRIPTION": "Buy LLM inference run by providers' idle compute, shard by shard. Authenticate with "
    "`Authorization: Token <key>` (manage.py issue_token prints one).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from our own static files: the docs page works with no network.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Channels and Celery: in-process (embedded profile) unless REDIS_URL is set.
REDIS_URL = env_str("REDIS_URL")
# The cache holds the rate limits' counts: shared by every server process through Redis on the full profile.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL, "KEY_PREFIX": "cm"}
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, which cuts the channel layer's blocking
            # pops (an idle consumer would crash every 5 s): blocking reads must wait as long as the pop does.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_RESULT_BACKEND = "cache+memory://"
    CELERY_TASK_ALWAYS_EAGER = True
    CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# Periodic tasks (celery beat); each app adds its own entries. Intervals in seconds.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # Providers' earnings leave PENDING once their challenge window has closed.
    "ledger.release_due_earnings": {
        "task": "ledger.release_due_earnings",
        "schedule": float(env_int("LEDGER_RELEASE_EVERY_SECONDS", 60)),
    },
    # The auction clears the book every few seconds (and sooner when a bid arrives: see AUCTION_NUDGE_SECONDS).
    "market.clear_market": {"task": "market.clear_market", "schedule": float(env_int("AUCTION_EVERY_SECONDS", 2))},
    # The chain: send queued operator transactions, credit deposits, refresh stakes; anchor settlement batches.
    "ledger.chain_sync": {"task": "ledger.chain_sync", "schedule": float(env_int("CHAIN_SYNC_SECONDS", 3))},
    # Verification: advance open audits and challenges (phase 1 re-runs, reveals, verdicts); drop old transcripts.
    "verification.advance": {"task": "verification.advance", "schedule": float(env_int("VERIFY_EVERY_SECONDS", 2))},
    "ledger.chain_anchor": {
        "task": "ledger.chain_anchor",
        "schedule": float(env_int("CHAIN_ANCHOR_EVERY_SECONDS", 30)),
    },
}

# Ledger (amounts in integer base units). With CONTRIBUTE_TO_USE on, a new account starts with nothing and earns
# by providing before it can buy; off, each new account gets SIGNUP_GRANT (0: none). Providers' earnings stay
# pending for CHALLENGE_WINDOW_SECONDS after settlement, while the buyer may challenge the job.
CONTRIBUTE_TO_USE = env_bool("CONTRIBUTE_TO_USE", False)
SIGNUP_GRANT = env_int("SIGNUP_GRANT", 1_000_000)
CHALLENGE_WINDOW_SECONDS = env_int("CHALLENGE_WINDOW_SECONDS", 3600)

# The chain (docs/chain.md). CHAIN_RPC_URL empty: no chain, providers are placed without a stake (the demo and the
# chain tests start Anvil and set it). Set: the market deploys (or finds) its contracts there, places a provider only
# while its stake, read from the chain at most CHAIN_STAKE_MAX_AGE_SECONDS ago, reaches CHAIN_MIN_STAKE base units,
# backs every ledger mint with tokens in the vault, credits deposits and pays withdrawals, anchors settlements every
# CHAIN_ANCHOR_EVERY_SECONDS, and slashes for the verifier. Unbonding must outlast the challenge window plus a dispute.
CHAIN_RPC_URL = env_str("CHAIN_RPC_URL")
# Anvil's first public development key, never in production: production must name its own operator.
CHAIN_OPERATOR_KEY = env_str("CHAIN_OPERATOR_KEY")
if not CHAIN_OPERATOR_KEY and CHAIN_RPC_URL and PRODUCTION:
    raise ImproperlyConfigured("CHAIN_OPERATOR_KEY must be set when CHAIN_RPC_URL is set and PRODUCTION is true")
if not CHAIN_OPERATOR_KEY and not PRODUCTION:
    CHAIN_OPERATOR_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
CHAIN_TREASURY = env_str("CHAIN_TREASURY")  # empty: the operator's address
CHAIN_MIN_STAKE = env_int("CHAIN_MIN_STAKE", 1_000_000)
CHAIN_CHALLENGER_SHARE_BPS = env_int("CHAIN_CHALLENGER_SHARE_BPS", 5_000)
CHAIN_DISPUTE_SECONDS = env_int("CHAIN_DISPUTE_SECONDS", 86_400)
CHAIN_UNBONDING_SECONDS = env_int("CHAIN_UNBONDING_SECONDS", CHALLENGE_WINDOW_SECONDS + CHAIN_DISPUTE_SECONDS + 3600)
if CHAIN_UNBONDING_SECONDS <= CHALLENGE_WINDOW_SECONDS + CHAIN_DISPUTE_SECONDS:
    raise ImproperlyConfigured(
        "CHAIN_UNBONDING_SECONDS must exceed CHALLENGE_WINDOW_SECONDS + CHAIN_DISPUTE_SECONDS, or a cheater could "
        "withdraw its stake before it can be slashed"
    )
# Stakes are read every CHAIN_SYNC_SECONDS; a read this old still counts, so a chain outage of a few minutes does not
# stop placement. That is safe because stake only leaves through unbonding, which stays slashable for
# CHAIN_UNBONDING_SECONDS (more than a day), and through slashes, which the market itself sends.
CHAIN_STAKE_MAX_AGE_SECONDS = env_int("CHAIN_STAKE_MAX_AGE_SECONDS", 300)
CHAIN_SYNC_SECONDS = env_int("CHAIN_SYNC_SECONDS", 3)  # outbox, deposits and stakes
CHAIN_ANCHOR_EVERY_SECONDS = env_int("CHAIN_ANCHOR_EVERY_SECONDS", 30)
CHAIN_ANCHOR_MAX_LEAVES = env_int("CHAIN_ANCHOR_MAX_LEAVES", 1_000)

# Verification (docs/verification.md). Every finished job is audited with a probability per provider (permille): at
# least AUDIT_FLOOR_PERMILLE, AUDIT_NEW_PERMILLE until AUDIT_TRUST_AFTER clean checks in a row (BOINC), and never less
# than the deterrence inequality needs given the slash (SLASH_AMOUNT) and the pay at stake. A buyer challenges within
# the window with CHALLENGE_BOND. A provider asked to reveal its layers answers within REVEAL_DEADLINE_SECONDS or
# loses by default. Transcripts are kept for the window plus CHAIN_DISPUTE_SECONDS at most while a dispute is open.
AUDIT_FLOOR_PERMILLE = env_int("AUDIT_FLOOR_PERMILLE", 50)
AUDIT_NEW_PERMILLE = env_int("AUDIT_NEW_PERMILLE", 500)
AUDIT_TRUST_AFTER = env_int("AUDIT_TRUST_AFTER", 10)
SLASH_AMOUNT = env_int("SLASH_AMOUNT", CHAIN_MIN_STAKE)
CHALLENGE_BOND = env_int("CHALLENGE_BOND", 50_000)
REVEAL_DEADLINE_SECONDS = env_int("REVEAL_DEADLINE_SECONDS", 120)
VERIFY_EVERY_SECONDS = env_int("VERIFY_EVERY_SECONDS", 2)
# The market holds keys for users on the development chain so the API can stake and deposit for them. Never with
# real money: refused in production.
CHAIN_DEV_WALLETS = env_bool("CHAIN_DEV_WALLETS", not PRODUCTION)
if CHAIN_DEV_WALLETS and PRODUCTION:
    raise ImproperlyConfigured("CHAIN_DEV_WALLETS holds users' keys: development only, never with PRODUCTION")

# Orchestration. Who keeps the market's time (auction rounds, releases): "server" is a clock on the ASGI server's
# event loop (the embedded profile, where the in-memory channel layer reaches only that process); "celery" is beat
# and a worker (the full profile). Deadlines are seconds a provider may take.
ORCHESTRATOR = env_str("ORCHESTRATOR", "celery" if REDIS_URL else "server")
# Where a placed job's runner runs. "server": in the ASGI server process that holds the connection of the job's
# first provider (on the embedded profile, the one server), so the hops it relays between providers connected
# there never leave the process; "worker": in a Celery worker, every hop through Redis.
JOB_RUNNERS = env_str("JOB_RUNNERS", "server")
if JOB_RUNNERS not in ("server", "worker"):
    raise ImproperlyConfigured(f"JOB_RUNNERS must be server or worker, not {JOB_RUNNERS!r}")
STEP_DEADLINE_SECONDS = float(env_int("STEP_DEADLINE_SECONDS", 20))
# A running job's runner renews its lease every RUNNER_HEARTBEAT_SECONDS; a job whose lease is older than
# RUNNER_LEASE_SECONDS lost its runner (its server died). Another runner takes it over and resumes it by replay once
# providers are free for every shard, at most RUNNER_MAX_RESUMES times per job; a job that cannot be resumed within
# RUNNER_RESUME_WITHIN_SECONDS after its lease ran out is ended: the steps it delivered are paid, the rest of the
# escrow refunded, the buyer's stream ended (market/services/runners.py). RUNNER_MAX_RESUMES=0 turns resuming off.
RUNNER_HEARTBEAT_SECONDS = float(env_int("RUNNER_HEARTBEAT_SECONDS", 5))
RUNNER_LEASE_SECONDS = float(env_int("RUNNER_LEASE_SECONDS", 30))
RUNNER_MAX_RESUMES = env_int("RUNNER_MAX_RESUMES", 2)
RUNNER_RESUME_WITHIN_SECONDS = float(env_int("RUNNER_RESUME_WITHIN_SECONDS", 60))
SESSION_OPEN_DEADLINE_SECONDS = float(env_int("SESSION_OPEN_DEADLINE_SECONDS", 180))
PROVIDER_HEARTBEAT_SECONDS = float(env_int("PROVIDER_HEARTBEAT_SECONDS", 15))
# A provider answers its benchmark challenge within this many seconds of it being sent, or fails the benchmark.
BENCHMARK_DEADLINE_SECONDS = float(env_int("BENCHMARK_DEADLINE_SECONDS", 60))
# A running job's tokens are stored (and then streamed to the buyer) at most this often; the first one at once.
STREAM_STORE_EVERY_MS = env_int("STREAM_STORE_EVERY_MS", 100)

# Threads for ONNX Runtime in this process (one shared pool for all shard sessions); 0 means all cores.
INFERENCE_THREADS = env_int("INFERENCE_THREADS", 0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# The market (docs/pricing.md). Money in integer base units, like the ledger.
# - The platform sets each provider's ask per layer-token: ASK_PER_COMPUTE_SECOND base units per second of its
#   benchmarked compute, divided by its reliability (at least ASK_RELIABILITY_FLOOR_PERMILLE / 1000).
# - A bid without a max_price offers DEFAULT_BID_PER_LAYER_TOKEN per layer-token of its whole bundle; an open bid
#   expires after BID_TTL_SECONDS unless it asks for another expiry (at most BID_MAX_TTL_SECONDS).
# - The platform keeps MARKET_FEE_BPS basis points of each trade, never more than the provider's markup.
# - A round runs the "auto" solver (CP-SAT for small books, greedy for large) with AUCTION_TIME_LIMIT_SECONDS;
#   a new bid nudges a round AUCTION_NUDGE_SECONDS later (bids arriving meanwhile join the same round).
ASK_PER_COMPUTE_SECOND = env_int("ASK_PER_COMPUTE_SECOND", 10_000)
# Speed: a provider's asks and place follow the step times the market observed on its real work once it has
# SPEED_MIN_SAMPLES decode steps (its benchmark, as the server timed it, before that); observed SPEED_FLAG_RATIO
# times slower than its benchmark, it is flagged.
SPEED_MIN_SAMPLES = env_int("SPEED_MIN_SAMPLES", 20)
# The observed speed is the median of the latest SPEED_HISTORY_JOBS jobs' observations, weighted by their steps; each
# job's observation is the median of its decode steps after the first SPEED_WARMUP_STEPS (caches, first allocations).
SPEED_HISTORY_JOBS = env_int("SPEED_HISTORY_JOBS", 20)
SPEED_WARMUP_STEPS = env_int("SPEED_WARMUP_STEPS", 2)
SPEED_FLAG_RATIO = env_int("SPEED_FLAG_RATIO", 3)
ASK_RELIABILITY_FLOOR_PERMILLE = env_int("ASK_RELIABILITY_FLOOR_PERMILLE", 100)
DEFAULT_BID_PER_LAYER_TOKEN = env_int("DEFAULT_BID_PER_LAYER_TOKEN", 50)
# A bid without a max_price offers the quote (the cheapest pipeline's asks for its tokens, market/quotes.py) plus
# this margin; only when nobody can serve the model now does it fall back to DEFAULT_BID_PER_LAYER_TOKEN.
QUOTE_MARGIN_BPS = env_int("QUOTE_MARGIN_BPS", 5_000)
BID_TTL_SECONDS = env_int("BID_TTL_SECONDS", 600)
BID_MAX_TTL_SECONDS = env_int("BID_MAX_TTL_SECONDS", 86_400)
MARKET_FEE_BPS = env_int("MARKET_FEE_BPS", 500)
AUCTION_SOLVER = env_str("AUCTION_SOLVER", "auto")
AUCTION_TIME_LIMIT_SECONDS = float(env_str("AUCTION_TIME_LIMIT_SECONDS", "2"))
AUCTION_EVERY_SECONDS = env_int("AUCTION_EVERY_SECONDS", 2)
# The embedded clock's interval while the book is empty (market/clock.py); anything that fills it nudges a round.
AUCTION_IDLE_SECONDS = env_int("AUCTION_IDLE_SECONDS", 30)
AUCTION_NUDGE_SECONDS = float(env_str("AUCTION_NUDGE_SECONDS", "0.2"))
AUCTION_MAX_BOOK = env_int("AUCTION_MAX_BOOK", 5_000)
# A placed job whose runner has not started this long after its round (a lost task) goes back into the book.
ALLOCATION_TIMEOUT_SECONDS = env_int("ALLOCATION_TIMEOUT_SECONDS", 60)
# The embedded profile's clock (market/clock.py) runs in the ASGI server; off, nothing clears the book there.
MARKET_CLOCK = env_bool("MARKET_CLOCK", True)
