//! Cluster mode: the runtime lists (blocklist, allowlist, bans) shared by
//! every gateway that names the same Redis and `key_prefix`.
//!
//! - Redis holds the shared set: one hash per list (`<prefix>:lists:deny`,
//!   `<prefix>:lists:allow`), field = CIDR, value = the entry as JSON (with
//!   its expiry). Every node reaps expired entries from its own lists; in
//!   Redis, `<prefix>:lists:expiry` (a sorted set by expiry) lets any node
//!   delete them with one atomic script every few seconds.
//! - A local change is written to its hash and published on
//!   `<prefix>:lists:changes` in one MULTI transaction; every other node
//!   applies it to its lists (kernel maps, L7 guard, state file) as soon as
//!   the message arrives. A node ignores its own messages, and what it
//!   applies from others is not announced again: no echo loops.
//! - A node that starts or reconnects subscribes first, then writes the
//!   local changes it made while Redis was away, then loads the whole set
//!   (Redis wins for everything else).
//! - `<prefix>:lists:epoch` names the Redis data set. When it is missing
//!   or not the one this node last synced with (Redis restarted without
//!   its data), the node writes all its runtime entries back: the nodes
//!   rebuild the shared set from what they enforce, nothing is dropped.
//! - Redis down: every node keeps enforcing what it has; local changes
//!   apply locally at once and are written to Redis when it returns.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use ipnet::IpNet;
use redis::{aio::MultiplexedConnection, AsyncCommands, AsyncConnectionConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{Change, Entry, SourceLists};
use crate::{config::Cluster, telemetry::Metrics, xdp::ListKind};

/// Connecting and each command give up after this long.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the connection is checked, and retried when down.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired entries are deleted from Redis (by every node; it is
/// idempotent).
const PRUNE_INTERVAL: Duration = Duration::from_secs(5);

/// Deletes the entries whose expiry (in the sorted set KEYS[1], members
/// `<list>|<cidr>`) is at or before ARGV[1] from their hashes
/// (`ARGV[2]<list>`), atomically: an entry re-added meanwhile has a new
/// score and stays.
const PRUNE_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, member in ipairs(due) do
  local sep = string.find(member, '|', 1, true)
  if sep then
    redis.call('HDEL', ARGV[2] .. string.sub(member, 1, sep - 1), string.sub(member, sep + 1))
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
";

/// A change as published on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The node that made it.
    node: String,
    /// `put` or `rm`.
    op: String,
    /// `deny` or `allow`.
    list: String,
    cidr: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<Entry>,
}

fn list_name(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Deny => "deny",
        ListKind::Allow => "allow",
    }
}

fn list_kind(name: &str) -> Option<ListKind> {
    match name {
        "deny" => Some(ListKind::Deny),
        "allow" => Some(ListKind::Allow),
        _ => None,
    }
}

/// What `xgate status` shows of the sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node: String,
    /// Whether the node is connected to Redis and synced.
    pub synced: bool,
}

/// The sync's state, shared with the admin API.
#[derive(Debug)]
pub struct ClusterState {
    node: String,
    synced: AtomicBool,
}

impl ClusterState {
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            node: self.node.clone(),
            synced: self.synced.load(Ordering::Relaxed),
        }
    }
}

pub struct ClusterSync {
    client: Result<redis::Client, String>,
    prefix: String,
    node: String,
    lists: Arc<SourceLists>,
    metrics: Arc<Metrics>,
    changes: mpsc::UnboundedReceiver<Change>,
    /// Local changes not yet in Redis.
    dirty: BTreeSet<(ListKind, IpNet)>,
    /// The Redis data set this node last synced with.
    epoch: Option<String>,
    state: Arc<ClusterState>,
}

impl ClusterSync {
    /// From now on, local changes to `lists` are queued for Redis.
    pub fn new(config: &Cluster, lists: Arc<SourceLists>, metrics: Arc<Metrics>) -> Self {
        let (tx, changes) = mpsc::unbounded_channel();
        lists.announce_to(tx);
        let node = config.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "xgate".into());
            format!("{host}-{}", std::process::id())
        });
        Self {
            client: redis::Client::open(config.redis.as_str()).map_err(|e| e.to_string()),
            prefix: config.key_prefix.clone(),
            lists,
            metrics,
            changes,
            dirty: BTreeSet::new(),
            epoch: None,
            state: Arc::new(ClusterState {
                node: node.clone(),
                synced: AtomicBool::new(false),
            }),
            node,
        }
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.state.clone()
    }

    fn key(&self, kind: ListKind) -> String {
        format!("{}:lists:{}", self.prefix, list_name(kind))
    }

    /// Sorted set of the entries that expire, scored by expiry (unix s).
    fn expiry_key(&self) -> String {
        format!("{}:lists:expiry", self.prefix)
    }

    fn epoch_key(&self) -> String {
        format!("{}:lists:epoch", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:lists:changes", self.prefix)
    }

    /// Syncs until shutdown, reconnecting after every failure.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(node = %self.node, prefix = %self.prefix, "cluster lists: syncing through Redis");
        let mut was_up = true;
        loop {
            let outcome = self.session(&mut shutdown, &mut was_up).await;
            self.state.synced.store(false, Ordering::Relaxed);
            match outcome {
                Ok(()) => return,
                Err(error) => {
                    self.metrics.cluster_list_event("disconnected");
                    if was_up {
                        tracing::warn!(%error, pending = self.dirty.len(), "cluster lists: Redis unreachable; enforcing the local lists, local changes are written to Redis when it returns");
                    } else {
                        tracing::debug!(%error, "cluster lists: Redis still unreachable");
                    }
                    was_up = false;
                }
            }
            let retry = tokio::time::sleep(CHECK_INTERVAL);
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = &mut retry => break,
                    _ = shutdown.changed() => return,
                    Some(change) = self.changes.recv() => self.mark(&change),
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    fn mark(&mut self, change: &Change) {
        let key = match change {
            Change::Put(kind, entry) => (*kind, entry.cidr),
            Change::Remove(kind, cidr) => (*kind, *cidr),
        };
        self.dirty.insert(key);
    }

    /// One connection's life: subscribe, resync, then publish local changes
    /// and apply remote ones until Redis goes away (Err) or shutdown (Ok).
    async fn session(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        was_up: &mut bool,
    ) -> Result<(), String> {
        let client = self.client.clone()?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| "pub/sub connect: timed out".to_string())?
            .map_err(|e| format!("pub/sub connect: {e}"))?;
        tokio::time::timeout(REDIS_TIMEOUT, pubsub.subscribe(self.channel()))
            .await
            .map_err(|_| "subscribe: timed out".to_string())?
            .map_err(|e| format!("subscribe: {e}"))?;
        let mut messages = pubsub.into_on_message();
        self.resync(&mut conn).await?;
        if !*was_up {
            tracing::info!("cluster lists: Redis is back; synced");
        }
        *was_up = true;
        self.state.synced.store(true, Ordering::Relaxed);
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        let prune_script = redis::Script::new(PRUNE_SCRIPT);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                Some(change) = self.changes.recv() => {
                    self.mark(&change);
                    self.flush(&mut conn).await?;
                }
                message = messages.next() => match message {
                    Some(message) => self.receive(&message),
                    None => return Err("the subscription ended".into()),
                },
                _ = prune.tick() => {
                    let pruned: usize = prune_script
                        .key(self.expiry_key())
                        .arg(super::unix_secs(SystemTime::now()))
                        .arg(format!("{}:lists:", self.prefix))
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| format!("prune: {e}"))?;
                    if pruned > 0 {
                        tracing::debug!(pruned, "cluster lists: expired entries deleted from Redis");
                    }
                }
                _ = check.tick() => {
                    let () = redis::cmd("PING")
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| format!("PING: {e}"))?;
                }
            }
        }
    }

    /// Writes the local changes Redis has not seen: each in one transaction
    /// with its message. What fails stays queued.
    async fn flush(&mut self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        while let Some((kind, cidr)) = self.dirty.first().copied() {
            let local = self
                .lists
                .runtime_entries(kind)
                .into_iter()
                .find(|e| e.cidr == cidr);
            self.write(conn, kind, cidr, local).await?;
            self.dirty.remove(&(kind, cidr));
        }
        Ok(())
    }

    /// Puts (or, with `None`, removes) one entry in Redis and tells the
    /// other nodes.
    async fn write(
        &self,
        conn: &mut MultiplexedConnection,
        kind: ListKind,
        cidr: IpNet,
        entry: Option<Entry>,
    ) -> Result<(), String> {
        let message = Message {
            node: self.node.clone(),
            op: if entry.is_some() { "put" } else { "rm" }.into(),
            list: list_name(kind).into(),
            cidr,
            entry: entry.clone(),
        };
        let text = serde_json::to_string(&message).expect("serializable");
        let mut pipe = redis::pipe();
        pipe.atomic();
        let member = format!("{}|{cidr}", list_name(kind));
        match &entry {
            Some(entry) => {
                pipe.hset(
                    self.key(kind),
                    cidr.to_string(),
                    serde_json::to_string(entry).expect("serializable"),
                )
                .ignore();
                match entry.expires_at {
                    Some(at) => pipe.zadd(self.expiry_key(), &member, at).ignore(),
                    None => pipe.zrem(self.expiry_key(), &member).ignore(),
                };
            }
            None => {
                pipe.hdel(self.key(kind), cidr.to_string()).ignore();
                pipe.zrem(self.expiry_key(), &member).ignore();
            }
        }
        pipe.publish(self.channel(), text).ignore();
        let () = pipe
            .query_async(conn)
            .await
            .map_err(|e| format!("write {cidr}: {e}"))?;
        self.metrics.cluster_list_event("published");
        Ok(())
    }

    fn receive(&self, message: &redis::Msg) {
        let parsed = message
            .get_payload::<String>()
            .ok()
            .and_then(|text| serde_json::from_str::<Message>(&text).ok());
        let Some(message) = parsed else {
            self.metrics.cluster_list_event("failed");
            tracing::warn!("cluster lists: ignored a message that is not a list change");
            return;
        };
        if message.node == self.node {
            return;
        }
        let Some(kind) = list_kind(&message.list) else {
            self.metrics.cluster_list_event("failed");
            return;
        };
        let change = match (message.op.as_str(), message.entry) {
            ("put", Some(entry)) if entry.cidr == message.cidr => Change::Put(kind, entry),
            ("rm", _) => Change::Remove(kind, message.cidr),
            _ => {
                self.metrics.cluster_list_event("failed");
                tracing::warn!(node = %message.node, "cluster lists: ignored a malformed change");
                return;
            }
        };
        self.metrics.cluster_list_event("received");
        if let Err(error) = self.lists.apply_remote(&change) {
            self.metrics.cluster_list_event("failed");
            tracing::error!(%error, node = %message.node, "cluster lists: could not apply a change from another node");
        }
    }

    /// Writes pending local changes, then makes the local lists match the
    /// shared set (or, when Redis lost it, writes ours back).
    async fn resync(&mut self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let epoch_key = self.epoch_key();
        let fresh_epoch = format!("{:016x}", fastrand::u64(..));
        let created: bool = conn
            .set_nx(&epoch_key, &fresh_epoch)
            .await
            .map_err(|e| format!("SETNX epoch: {e}"))?;
        let epoch: String = conn
            .get(&epoch_key)
            .await
            .map_err(|e| format!("GET epoch: {e}"))?;
        // Redis lost the shared set (or never had one): ours is written
        // back. Otherwise Redis wins, except for our pending changes.
        let restore = created || self.epoch.as_ref().is_some_and(|e| *e != epoch);
        self.flush(conn).await?;
        let now = SystemTime::now();
        let (mut added, mut removed, mut pushed) = (0, 0, 0);
        for kind in [ListKind::Deny, ListKind::Allow] {
            let stored: HashMap<String, String> = conn
                .hgetall(self.key(kind))
                .await
                .map_err(|e| format!("HGETALL: {e}"))?;
            let mut shared = HashMap::new();
            for (field, value) in stored {
                match serde_json::from_str::<Entry>(&value) {
                    Ok(entry) if entry.expired(now) => {
                        let _: () = conn
                            .hdel(self.key(kind), &field)
                            .await
                            .map_err(|e| format!("HDEL: {e}"))?;
                    }
                    Ok(entry) => {
                        shared.insert(entry.cidr, entry);
                    }
                    Err(e) => {
                        tracing::warn!(field, error = %e, "cluster lists: ignored an unreadable shared entry")
                    }
                }
            }
            let mut changes: Vec<Change> = shared
                .values()
                .map(|entry| Change::Put(kind, entry.clone()))
                .collect();
            for local in self.lists.runtime_entries(kind) {
                if shared.contains_key(&local.cidr) {
                    continue;
                }
                if restore {
                    self.write(conn, kind, local.cidr, Some(local)).await?;
                    pushed += 1;
                } else {
                    changes.push(Change::Remove(kind, local.cidr));
                    removed += 1;
                }
            }
            added += shared.len();
            self.lists
                .apply_remote_batch(&changes)
                .map_err(|e| format!("apply the shared {} set: {e}", list_name(kind)))?;
        }
        self.epoch = Some(epoch);
        self.metrics.cluster_list_event("resynced");
        tracing::info!(
            shared = added,
            removed,
            pushed,
            "cluster lists: synced with Redis"
        );
        Ok(())
    }
}
