//! The replicator: one task per replica that writes this replica's changes to Redis and
//! mirrors everyone else's (see the module above for the model).
//!
//! Redis layout, all under `kw1:{<namespace>}:` (`kw1` is the wire version; the braces are
//! a cluster hash tag so scripts may touch every key):
//!
//! | key | type | holds | TTL |
//! |---|---|---|---|
//! | `lk:z` / `lk:h` | ZSET / HASH | scope → lock end (Redis clock, ms) / reason | last lock end + 60 s |
//! | `st` | HASH | scope → failure streak | 1 h after the last failure |
//! | `ver` | STRING | change counter (every published change increments it) | 1 day |
//! | `epoch` | STRING | set on first contact; missing ⇒ Redis lost its data | none |
//! | `rep` | ZSET | replica id → last heartbeat | 3 heartbeats |
//! | `w:<window_ms>:<counter>` | HASH | bucket index → hits (60 buckets a window) | window + 1 bucket |
//!
//! Changes are published on `kw1:<namespace>:events` as JSON. Only relative milliseconds
//! cross process boundaries; absolute times live on Redis's clock (`TIME`) alone.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use serde::Deserialize;

use super::{Event, Shared};
use crate::config::RedisState;
use crate::quota::QuotaState;

/// Events written per script call.
const EVENT_BATCH: usize = 256;
/// Window counters synced per script call.
const COUNTER_BATCH: usize = 256;
/// Counter names longer than this are stored under a digest.
const MAX_NAME: usize = 200;
/// A replica counts as live for this long after its last heartbeat.
const REPLICA_TTL_MS: u64 = 3_000;
/// Streaks expire this long after their last failure (in memory they never do).
const STREAK_TTL_MS: u64 = 3_600_000;

/// Shared by the lock scripts (after `z`, `h` are bound): `now` on Redis's clock, and
/// expired locks dropped.
const NOW_AND_TRIM_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
if #gone > 0 then
  redis.call('HDEL', h, unpack(gone))
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
end
"#;

/// Applies a batch of events: locks max-merge on Redis's clock, unlocks, streak
/// increments / max-sets / clears; each change bumps `ver` and is published. Returns the
/// change counter, or -1 for a seed refused because the epoch exists.
const EVENTS_LUA: &str = r#"
local z, h, ver, st, epoch = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local chan, origin, streak_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local evs = cjson.decode(ARGV[4])
-- Seeding (after a reconnect) applies only to a Redis without the fleet's epoch, in the
-- same step that sets it: no other replica's change can slip in between.
if ARGV[5] == 'seed' and not redis.call('SET', epoch, origin, 'NX') then
  return -1
end
-- NOW_AND_TRIM
local function publish(msg)
  msg.v = redis.call('INCR', ver)
  msg.o = origin
  redis.call('PUBLISH', chan, cjson.encode(msg))
end
for _, e in ipairs(evs) do
  if e.k == 'L' then
    local untilms = now + e.ms
    local cur = tonumber(redis.call('ZSCORE', z, e.s) or 0)
    if untilms > cur then
      redis.call('ZADD', z, untilms, e.s)
      redis.call('HSET', h, e.s, e.r)
      publish({k = 'L', s = e.s, ms = e.ms, r = e.r})
    end
  elseif e.k == 'U' then
    redis.call('ZREM', z, e.s)
    redis.call('HDEL', h, e.s)
    publish({k = 'U', s = e.s})
  elseif e.k == 'F' then
    local n = redis.call('HINCRBY', st, e.s, e.n)
    redis.call('PEXPIRE', st, streak_ttl)
    publish({k = 'S', s = e.s, n = n})
  elseif e.k == 'M' then
    local cur = tonumber(redis.call('HGET', st, e.s) or 0)
    if e.n > cur then
      redis.call('HSET', st, e.s, e.n)
      redis.call('PEXPIRE', st, streak_ttl)
      publish({k = 'S', s = e.s, n = e.n})
    end
  elseif e.k == 'C' then
    if redis.call('HDEL', st, e.s) > 0 then
      publish({k = 'C', s = e.s})
    end
  end
end
local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
if #last > 0 then
  local exp = tonumber(last[2]) + 60000
  redis.call('PEXPIREAT', z, exp)
  redis.call('PEXPIREAT', h, exp)
end
redis.call('PEXPIRE', ver, 86400000)
return tonumber(redis.call('GET', ver) or 0)
"#;

/// Everything a resync needs: the change counter, live locks (remaining ms) and streaks.
const SNAPSHOT_LUA: &str = r#"
local z, h, ver, st = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- NOW_AND_TRIM
local locks = {}
local live = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  locks[#locks + 1] = live[i]
  locks[#locks + 1] = tostring(tonumber(live[i + 1]) - now)
  locks[#locks + 1] = redis.call('HGET', h, live[i]) or ''
end
local streaks = redis.call('HGETALL', st)
return {tostring(tonumber(redis.call('GET', ver) or 0)), locks, streaks}
"#;

/// Heartbeat, the change counter, and window counters: adds each delta to the current
/// bucket (Redis's clock), drops buckets that left the window, returns the totals.
const TICK_LUA: &str = r#"
local rep, ver = KEYS[1], KEYS[2]
local id, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', rep, now, id)
redis.call('ZREMRANGEBYSCORE', rep, '-inf', now - ttl)
redis.call('PEXPIRE', rep, ttl * 3)
local out = {tonumber(redis.call('GET', ver) or 0), redis.call('ZCARD', rep)}
for i = 3, #KEYS do
  local w = tonumber(ARGV[2 * i - 3])
  local d = tonumber(ARGV[2 * i - 2])
  local width = math.max(1, math.ceil(w / 60))
  local idx = math.floor(now / width)
  if d > 0 then redis.call('HINCRBY', KEYS[i], idx, d) end
  local all = redis.call('HGETALL', KEYS[i])
  local total = 0
  for j = 1, #all, 2 do
    if tonumber(all[j]) <= idx - 60 then
      redis.call('HDEL', KEYS[i], all[j])
    else
      total = total + tonumber(all[j + 1])
    end
  end
  if #all > 0 then redis.call('PEXPIRE', KEYS[i], w + width) end
  out[#out + 1] = total
end
return out
"#;

/// A published change, as the scripts encode it.
#[derive(Debug, Deserialize)]
struct Message {
    k: String,
    v: u64,
    s: String,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    r: String,
    #[serde(default)]
    n: u32,
    o: String,
}

struct Keys {
    locks_z: String,
    locks_h: String,
    ver: String,
    streaks: String,
    epoch: String,
    replicas: String,
    window_prefix: String,
    channel: String,
}

impl Keys {
    fn new(ns: &str) -> Self {
        let p = format!("kw1:{{{ns}}}:");
        Self {
            locks_z: format!("{p}lk:z"),
            locks_h: format!("{p}lk:h"),
            ver: format!("{p}ver"),
            streaks: format!("{p}st"),
            epoch: format!("{p}epoch"),
            replicas: format!("{p}rep"),
            window_prefix: format!("{p}w:"),
            channel: format!("kw1:{ns}:events"),
        }
    }

    fn window(&self, counter: &str, window_ms: u64) -> String {
        if counter.len() > MAX_NAME {
            let digest = crate::digest::short_hex(counter.as_bytes(), 8);
            format!("{}{window_ms}:h:{digest}", self.window_prefix)
        } else {
            format!("{}{window_ms}:{counter}", self.window_prefix)
        }
    }
}

/// Starts replicating `quota` through the Redis `cfg` names. Returns at once: the first
/// connection is made in the background, and requests are served on local state until
/// (and whenever) Redis is unavailable.
pub fn start(quota: &Arc<QuotaState>, cfg: &RedisState) -> Arc<Shared> {
    let replica_id = format!(
        "{}-{}-{:04x}",
        hostname(),
        std::process::id(),
        fastrand::u16(..)
    );
    let shared = Arc::new(Shared::new(replica_id, cfg.display_url()));
    if cfg.required {
        shared.require_first_sync();
    }
    quota.attach(shared.clone());
    shared.set_healthy(false);
    let client = Client::open(cfg.url.expose()).ok();
    let replicator = Replicator {
        quota: Arc::downgrade(quota),
        shared: shared.clone(),
        keys: Keys::new(&cfg.namespace),
        sync_interval: cfg.sync_interval,
        timeout: cfg.timeout,
        events: Script::new(&EVENTS_LUA.replace("-- NOW_AND_TRIM", NOW_AND_TRIM_LUA)),
        snapshot: Script::new(&SNAPSHOT_LUA.replace("-- NOW_AND_TRIM", NOW_AND_TRIM_LUA)),
        tick: Script::new(TICK_LUA),
    };
    match client {
        Some(client) => {
            tokio::spawn(replicator.run(client));
        }
        None => tracing::error!(
            url = %shared.display_url,
            "state: the Redis URL cannot be used; serving on local state only"
        ),
    }
    shared
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "keyway".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(48)
        .collect()
}

struct Replicator {
    quota: Weak<QuotaState>,
    shared: Arc<Shared>,
    keys: Keys,
    sync_interval: Duration,
    timeout: Duration,
    events: Script,
    snapshot: Script,
    tick: Script,
}

/// One connected period: the command connection, the subscription, and the last change
/// number applied.
struct Session {
    conn: MultiplexedConnection,
    last_ver: u64,
    /// A change number a tick saw ahead of `last_ver` (a lost message if it stays ahead).
    suspect_ver: Option<u64>,
}

/// Why a connected period ended.
type Cause = String;

impl Replicator {
    async fn run(self, client: Client) {
        let mut backoff = Duration::from_millis(50);
        let mut down_since = Instant::now();
        let mut warned = false;
        let mut first = true;
        loop {
            let Some(quota) = self.quota.upgrade() else {
                return;
            };
            match self.connect(&client, &quota).await {
                Ok((mut session, messages, stats)) => {
                    backoff = Duration::from_millis(50);
                    self.shared.set_healthy(true);
                    self.shared.touch(quota.now_ms());
                    if first {
                        tracing::info!(
                            url = %self.shared.display_url,
                            replica = %self.shared.replica_id,
                            replicas = self.shared.replicas(),
                            locks = stats.locks,
                            "state: connected to Redis; locks, streaks and windows are shared"
                        );
                    } else {
                        tracing::info!(
                            url = %self.shared.display_url,
                            outage_ms = down_since.elapsed().as_millis() as u64,
                            replayed = stats.replayed,
                            locks = stats.locks,
                            reseeded = stats.reseeded,
                            "state: Redis is back; outbox replayed and state resynced"
                        );
                    }
                    first = false;
                    drop(quota);
                    let cause = self.serve(&mut session, messages).await;
                    self.shared.set_healthy(false);
                    down_since = Instant::now();
                    if self.quota.upgrade().is_none() {
                        return;
                    }
                    tracing::warn!(
                        url = %self.shared.display_url,
                        cause = %cause,
                        "state: lost Redis; serving on local state (windows scaled by the \
                         replicas last seen) and queueing changes until it is back"
                    );
                    warned = true;
                }
                Err(cause) => {
                    if !warned {
                        tracing::warn!(
                            url = %self.shared.display_url,
                            cause = %cause,
                            "state: Redis is unavailable; serving on local state and \
                             retrying in the background"
                        );
                        warned = true;
                    } else {
                        tracing::debug!(cause = %cause, "state: Redis reconnect failed");
                    }
                    drop(quota);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs `fut` under the command timeout, flattening both failures into a cause.
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Cause> {
        let op = what.to_string();
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => {
                metrics::counter!(crate::metrics::STATE_OPS, "op" => op, "result" => "ok")
                    .increment(1);
                Ok(v)
            }
            Ok(Err(e)) => {
                metrics::counter!(crate::metrics::STATE_OPS, "op" => op, "result" => "error")
                    .increment(1);
                Err(format!("{what}: {}", e.category()))
            }
            Err(_) => {
                metrics::counter!(crate::metrics::STATE_OPS, "op" => op, "result" => "timeout")
                    .increment(1);
                Err(format!("{what}: no answer within {:?}", self.timeout))
            }
        }
    }

    /// Connects, subscribes, re-seeds an emptied Redis, replays the outbox and resyncs.
    async fn connect(
        &self,
        client: &Client,
        quota: &QuotaState,
    ) -> Result<(Session, redis::aio::PubSubStream, ConnectStats), Cause> {
        let connect_timeout = self.timeout * 4;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = tokio::time::timeout(
            connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {}", e.category()))?;
        // Subscribe before the snapshot, so no change falls between the two.
        let pubsub = tokio::time::timeout(connect_timeout, async {
            let mut p = client.get_async_pubsub().await?;
            p.subscribe(&self.keys.channel).await?;
            Ok::<_, redis::RedisError>(p)
        })
        .await
        .map_err(|_| "subscribe: timed out".to_string())?
        .map_err(|e| format!("subscribe: {}", e.category()))?;
        let mut session = Session {
            conn,
            last_ver: 0,
            suspect_ver: None,
        };
        let mut stats = ConnectStats::default();
        // A missing epoch means this Redis has never seen the fleet, or lost its data
        // (restarted empty): push what this replica knows back (max-merge, idempotent),
        // atomically with setting the epoch.
        let seed: Vec<Event> = quota
            .seed_events()
            .into_iter()
            .filter(|e| !event_scope(e).starts_with("local:"))
            .collect();
        if self.write(&mut session.conn, &seed, "seed").await? >= 0 && !seed.is_empty() {
            stats.reseeded = seed.len();
            metrics::counter!(crate::metrics::STATE_RESYNCS, "cause" => "reseed").increment(1);
        }
        stats.replayed = self.flush_events(&mut session).await?;
        stats.locks = self.resync(&mut session, quota, "reconnect").await?;
        self.sync_counters(&mut session, quota).await?;
        Ok((session, pubsub.into_on_message(), stats))
    }

    /// Writes queued events until the outbox is empty; returns how many were written.
    async fn flush_events(&self, session: &mut Session) -> Result<usize, Cause> {
        let mut written = 0;
        loop {
            let batch = self.shared.peek(EVENT_BATCH);
            if batch.is_empty() {
                return Ok(written);
            }
            self.write(&mut session.conn, &batch, "apply").await?;
            self.shared.done(batch.len());
            written += batch.len();
        }
    }

    /// Runs the events script; `mode` is `apply`, or `seed` (only into an emptied Redis).
    async fn write(
        &self,
        conn: &mut MultiplexedConnection,
        events: &[Event],
        mode: &str,
    ) -> Result<i64, Cause> {
        let payload = serde_json::Value::Array(events.iter().map(event_json).collect());
        let mut call = self.events.prepare_invoke();
        call.key(&self.keys.locks_z)
            .key(&self.keys.locks_h)
            .key(&self.keys.ver)
            .key(&self.keys.streaks)
            .key(&self.keys.epoch)
            .arg(&self.keys.channel)
            .arg(&self.shared.replica_id)
            .arg(STREAK_TTL_MS)
            .arg(payload.to_string())
            .arg(mode);
        self.timed("events", call.invoke_async(conn)).await
    }

    /// Replaces the local mirror with Redis's locks and streaks; returns the lock count.
    async fn resync(
        &self,
        session: &mut Session,
        quota: &QuotaState,
        cause: &'static str,
    ) -> Result<usize, Cause> {
        let mut call = self.snapshot.prepare_invoke();
        call.key(&self.keys.locks_z)
            .key(&self.keys.locks_h)
            .key(&self.keys.ver)
            .key(&self.keys.streaks);
        let (ver, locks, streaks): (String, Vec<String>, Vec<String>) = self
            .timed("snapshot", call.invoke_async(&mut session.conn))
            .await?;
        let locks: Vec<(String, u64, String)> = locks
            .chunks_exact(3)
            .filter_map(|c| Some((c[0].clone(), c[1].parse().ok()?, c[2].clone())))
            .collect();
        let streaks: Vec<(String, u32)> = streaks
            .chunks_exact(2)
            .filter_map(|c| Some((c[0].clone(), c[1].parse().ok()?)))
            .collect();
        // `local:` scopes never leave this replica: keep them across the replacement.
        let keep: Vec<Event> = quota
            .seed_events()
            .into_iter()
            .filter(|e| event_scope(e).starts_with("local:"))
            .collect();
        quota.replace_mirror(&locks, &streaks);
        // Changes made here but not yet written stay in force locally.
        for e in keep.iter().chain(self.shared.peek(usize::MAX).iter()) {
            apply_own(quota, e);
        }
        session.last_ver = ver.parse().unwrap_or(0);
        session.suspect_ver = None;
        self.shared
            .lock_version
            .store(session.last_ver, std::sync::atomic::Ordering::Relaxed);
        self.shared
            .resyncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(crate::metrics::STATE_RESYNCS, "cause" => cause).increment(1);
        Ok(locks.len())
    }

    /// Connected: applies published changes, flushes events when woken, syncs windows
    /// and the heartbeat every interval. Returns when Redis fails.
    async fn serve(&self, session: &mut Session, mut messages: redis::aio::PubSubStream) -> Cause {
        let mut tick = tokio::time::interval(self.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(quota) = self.quota.upgrade() else {
                return "shut down".into();
            };
            let step = tokio::select! {
                msg = messages.next() => match msg {
                    None => Err("subscription closed".to_string()),
                    Some(msg) => self.on_message(session, &quota, msg.get_payload_bytes()).await,
                },
                _ = self.shared.wake.notified() => async {
                    self.flush_events(session).await?;
                    self.sync_counters(session, &quota).await
                }.await,
                _ = tick.tick() => async {
                    self.flush_events(session).await?;
                    self.sync_counters(session, &quota).await
                }.await,
            };
            if let Err(cause) = step {
                return cause;
            }
        }
    }

    async fn on_message(
        &self,
        session: &mut Session,
        quota: &QuotaState,
        payload: &[u8],
    ) -> Result<(), Cause> {
        let Ok(m) = serde_json::from_slice::<Message>(payload) else {
            tracing::debug!("state: ignored an event that is not Keyway's");
            return Ok(());
        };
        if m.v <= session.last_ver {
            return Ok(()); // already in the snapshot
        }
        if m.v != session.last_ver + 1 {
            self.resync(session, quota, "gap").await?;
            return Ok(());
        }
        session.last_ver = m.v;
        self.shared
            .lock_version
            .store(m.v, std::sync::atomic::Ordering::Relaxed);
        if m.o == self.shared.replica_id {
            return Ok(());
        }
        metrics::counter!(crate::metrics::STATE_EVENTS_RECEIVED, "kind" => kind_label(&m.k))
            .increment(1);
        match m.k.as_str() {
            "L" => quota.apply_remote_lock(&m.s, m.ms, &m.r),
            "U" => quota.apply_remote_unlock(&m.s),
            "S" => quota.apply_remote_streak(&m.s, m.n),
            "C" => quota.apply_remote_streak(&m.s, 0),
            _ => {}
        }
        Ok(())
    }

    /// Heartbeat plus window deltas; pulls fleet totals and the change counter.
    async fn sync_counters(&self, session: &mut Session, quota: &QuotaState) -> Result<(), Cause> {
        let now = quota.now_ms();
        let all = self.shared.take_deltas(now, super::MAX_SHARED_COUNTERS);
        // One call even with no counters: it carries the heartbeat and the change number.
        let chunks: Vec<&[(String, u64, u64)]> = if all.is_empty() {
            vec![&[]]
        } else {
            all.chunks(COUNTER_BATCH).collect()
        };
        for (i, sent) in chunks.iter().enumerate() {
            let mut call = self.tick.prepare_invoke();
            call.key(&self.keys.replicas)
                .key(&self.keys.ver)
                .arg(&self.shared.replica_id)
                .arg(REPLICA_TTL_MS);
            for (name, window, delta) in sent.iter() {
                call.key(self.keys.window(name, *window))
                    .arg(*window)
                    .arg(*delta);
            }
            let reply: Result<Vec<u64>, Cause> = self
                .timed("window", call.invoke_async(&mut session.conn))
                .await;
            let reply = match reply {
                Ok(r) if r.len() == sent.len() + 2 => Ok(r),
                Ok(_) => Err("window: unexpected reply".to_string()),
                Err(e) => Err(e),
            };
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    for rest in &chunks[i..] {
                        self.shared.deltas_failed(rest);
                    }
                    return Err(e);
                }
            };
            self.shared.deltas_synced(sent, &reply[2..]);
            self.shared
                .replicas
                .store(reply[1].max(1), std::sync::atomic::Ordering::Relaxed);
            if i == 0 {
                self.check_version(session, quota, reply[0]).await?;
            }
        }
        self.shared.touch(now);
        Ok(())
    }

    /// A change number ahead of ours on two ticks running is a lost message: resync.
    async fn check_version(
        &self,
        session: &mut Session,
        quota: &QuotaState,
        ver: u64,
    ) -> Result<(), Cause> {
        if ver > session.last_ver {
            if session.suspect_ver.is_some_and(|s| session.last_ver < s) {
                self.resync(session, quota, "gap").await?;
            } else {
                session.suspect_ver = Some(ver);
            }
        } else {
            session.suspect_ver = None;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct ConnectStats {
    replayed: usize,
    locks: usize,
    reseeded: usize,
}

fn kind_label(k: &str) -> &'static str {
    match k {
        "L" => "lock",
        "U" => "unlock",
        "S" => "streak",
        "C" => "clear",
        _ => "other",
    }
}

fn event_scope(e: &Event) -> &str {
    match e {
        Event::Lock { scope, .. }
        | Event::Unlock { scope }
        | Event::Fail { scope, .. }
        | Event::Streak { scope, .. }
        | Event::Clear { scope } => scope,
    }
}

fn event_json(e: &Event) -> serde_json::Value {
    use serde_json::json;
    match e {
        Event::Lock { scope, ms, reason } => json!({"k": "L", "s": scope, "ms": ms, "r": reason}),
        Event::Unlock { scope } => json!({"k": "U", "s": scope}),
        Event::Fail { scope, n } => json!({"k": "F", "s": scope, "n": n}),
        Event::Streak { scope, n } => json!({"k": "M", "s": scope, "n": n}),
        Event::Clear { scope } => json!({"k": "C", "s": scope}),
    }
}

/// Re-applies a change of this replica's own that Redis has not seen yet.
fn apply_own(quota: &QuotaState, e: &Event) {
    match e {
        Event::Lock { scope, ms, reason } => quota.apply_remote_lock(scope, *ms, reason),
        Event::Unlock { scope } => quota.apply_remote_unlock(scope),
        Event::Clear { scope } => quota.apply_remote_streak(scope, 0),
        Event::Fail { scope, n } | Event::Streak { scope, n } => {
            let cur = quota.streak(scope);
            quota.apply_remote_streak(scope, cur.max(*n));
        }
    }
}
