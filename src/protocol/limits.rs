//! Limits and timeouts, each with the reason for its value.

use std::time::Duration;

/// Default SSH port of the relay. 2222 so that it can sit beside the host's own sshd.
pub const DEFAULT_RELAY_PORT: u16 = 2222;

/// Longest system or device name. A DNS label is 63 bytes; names end up in
/// ssh configs and host names, so they obey the same bound.
pub const MAX_NAME_LEN: usize = 63;

/// Time from TCP accept to successful authentication. OpenSSH's
/// `LoginGraceTime` is 120 s; people do not type passwords here (keys only), so
/// a much shorter grace is enough and frees slots held by scanners sooner.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Connections accepted but not yet authenticated. Past this, new connections
/// are closed at once (like OpenSSH's `MaxStartups`), so a flood of idle
/// sockets cannot exhaust memory or file descriptors.
pub const MAX_UNAUTHENTICATED: usize = 256;

/// Public keys a client may try in one connection. OpenSSH's `MaxAuthTries` is 6.
pub const MAX_AUTH_ATTEMPTS: usize = 6;

/// The relay sends an SSH keepalive after this much silence from a peer...
pub const RELAY_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// ...and drops the peer after this many unanswered ones, so a dead device is
/// shown offline within about a minute (interval × (max + 1)).
pub const RELAY_KEEPALIVE_MAX: usize = 3;

/// How long the agent waits for a silent relay before it reconnects
/// (configurable per agent; the README promises that an agent notices a dead
/// relay within 30 s).
pub const AGENT_DEAD_RELAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reconnect backoff: first retry after 1 s, doubling to at most 60 s, with
/// jitter so that a thousand devices do not reconnect in lockstep after a relay
/// restart.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A connection that stayed up this long resets the backoff to its start:
/// a flapping link should not make a healthy device wait a minute.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

/// Time for a device to accept a stream (its agent connects to the target
/// first). Past this the controller is refused rather than left hanging.
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Time for the agent to connect to a local target. Local targets answer in
/// milliseconds; one that does not is down.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the relay looks for key changes made by `warren admin` in
/// another process (a cheap `PRAGMA data_version` read). Bounds how long a
/// revoked key's connections stay open.
pub const STORE_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Read-only connections a store keeps beside its one writing connection.
/// Reads (key lookups at login, `log`, `ls`) run on these, so they never
/// queue behind a write that waits for another process's lock (WAL lets
/// readers run beside a writer). A few cover the relay's concurrent reads;
/// more only hold file descriptors.
pub const STORE_READERS: usize = 4;

/// How long a store call waits for a lock another process holds (a
/// `warren admin` command, a backup) before it fails.
pub const STORE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the relay writes last-seen for online devices. Status survives a
/// relay crash to within this period.
pub const LAST_SEEN_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Largest SSH packet we ask peers to send (RFC 4253 requires 32768 at least;
/// OpenSSH uses 32768 for data, and larger packets cut per-packet cost).
pub const MAX_PACKET_SIZE: u32 = 65535;

/// Read buffer used when splicing a TCP socket into a channel: one read
/// takes up to this much, which then leaves as packets of the largest size
/// the peer allows.
pub const SPLICE_BUFFER: usize = 256 * 1024;

/// Deadline for draining connections on SIGTERM.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors, say): long
/// enough not to spin on an error that persists, short enough that serving
/// resumes at once when it clears.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Largest config or public key file read. They are a few hundred bytes; this
/// bounds what a hostile file can make us allocate.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Audit events stored in one transaction. One fsync per batch keeps a burst
/// of streams cheap; this bound keeps a transaction (and the wait of whoever
/// waits for a flush behind it) short.
pub const AUDIT_BATCH_MAX: usize = 512;

/// How often the relay prunes audit events past `--audit-retention`. Hourly
/// is plenty for a retention counted in days.
pub const AUDIT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Audit events kept in memory, in order, while the store refuses writes
/// (a cluster's database is away); past this, new events are dropped with
/// an error. About 300 bytes each: some 30 MB at most.
pub const AUDIT_BACKLOG_MAX: usize = 100_000;

/// How often kept audit events are tried again while the store refuses them.
pub const AUDIT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Audit events per page of `log`: one screen.
pub const AUDIT_PAGE_SIZE: usize = 20;

/// Largest page a script may ask for with `log --limit`.
pub const AUDIT_PAGE_MAX: usize = 10_000;

/// Invite lifetime when `--ttl` is not given: long enough to paste a token
/// into another machine, short enough that a leaked one soon stops working.
pub const INVITE_DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Longest invite lifetime: a week, for shipping a device to a site.
pub const INVITE_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// An enrollment connection may only run `enroll`; it is closed after this
/// even if the client stays silent.
pub const ENROLL_SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// Commands (`exec`) of one connection running or waiting their turn. Each
/// runs in a task of its own, off the connection's task; past this many the
/// next is refused at once, so a peer (even one logged in as `enroll`, with
/// any key) cannot queue store work faster than the disk takes it.
pub const MAX_COMMANDS_IN_FLIGHT: usize = 4;

/// `enroll TOKEN` attempts on one enrollment connection: a real machine
/// needs one; a few allow a mistyped token, not guessing.
pub const MAX_ENROLL_ATTEMPTS: usize = 3;

/// Longest invite token accepted (a real one is about 300 bytes).
pub const MAX_TOKEN_LEN: usize = 2048;

/// Labels an agent may declare, and the length of each key or value: they
/// are shown in tables and matched by `ls --label`, not a data store.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_LEN: usize = 63;
/// `warren doctor`: how long each network check may take. A relay or a
/// local target that has not answered in this time is reported as failing.
pub const DOCTOR_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `warren doctor`: clock difference to the relay above which the check
/// fails. Expiring invites and audit timestamps tolerate a minute; more
/// means the host's clock is not synchronised.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Failed logins one address may make in a burst before it is rate limited.
/// A person with a wrong key fails a handful of times; a password-less relay
/// has nothing to guess, so anything past this is a scanner or a brute force.
pub const FAILED_LOGIN_BURST: u32 = 10;

/// One failed-login allowance returns per this period (10 a minute), so a
/// misconfigured device retrying every few seconds is slowed, not banned.
pub const FAILED_LOGIN_REFILL: Duration = Duration::from_secs(6);

/// Addresses whose failed-login counts are kept. Past this the fullest
/// buckets are forgotten first, so a spoofing flood cannot grow memory.
pub const FAILED_LOGIN_TABLE_MAX: usize = 65_536;

/// A rate-limited address gets at most one audit record per this period
/// (with a count of the connections refused since), so a flood cannot flood
/// the audit log too.
pub const RATE_LIMIT_AUDIT_EVERY: Duration = Duration::from_secs(10);

/// `tcpip-forward` requests one connection may make (granted or refused).
/// An agent sends one per served port; past this a connection is asking
/// for names it does not own in bulk, and is closed.
pub const MAX_FORWARD_REQUESTS: usize = 64;

/// Unauthenticated connections from one address. Well under
/// [`MAX_UNAUTHENTICATED`], so one flooding host cannot take every slot
/// and lock legitimate users out (many devices behind one NAT connect one
/// at a time, and authenticate in milliseconds).
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 32;

/// How often a controller's long-lived relay connection (`socks`,
/// `forward`) is checked for having closed, as a backstop to the close
/// signal from the SSH layer. Cheap (a flag read); bounds how long a lost
/// connection can go unnoticed if that signal were missed.
pub const TUNNEL_LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Time for a SOCKS client to finish its greeting, authentication and
/// request. Browsers and curl send them at once; a client that dawdles holds
/// a slot and is cut.
pub const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// SOCKS connections still in their handshake. Past this, new connections are
/// closed at once, so idle sockets cannot exhaust file descriptors (the
/// same idea as [`MAX_UNAUTHENTICATED`] at the relay).
pub const MAX_SOCKS_HANDSHAKES: usize = 256;

/// Longest SOCKS username or password: RFC 1929 gives each one length byte.
pub const MAX_SOCKS_CREDENTIAL: usize = 255;

/// Connections a store on PostgreSQL keeps at most (per relay or admin
/// command): the relay's concurrent logins and writers, with room to spare;
/// three relays stay far below PostgreSQL's default 100.
pub const DATABASE_POOL_SIZE: usize = 16;

/// How long a store call waits for a pooled database connection before it
/// fails: a database that is away refuses logins in seconds, not minutes.
pub const DATABASE_WAIT: Duration = Duration::from_secs(3);

/// How long opening one connection to the database may take.
pub const DATABASE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause before the listening connection (`LISTEN`) connects again after it
/// failed: short, since notifications are lost while it is down.
pub const DATABASE_LISTEN_RETRY: Duration = Duration::from_millis(250);

/// How often a relay of a cluster writes its heartbeat. A relay silent for
/// three of these is taken for dead: no hop is tried to it.
pub const RELAY_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long dialing another relay of the cluster for a hop may take
/// (relays are near each other; a controller is waiting).
pub const HOP_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause before a device status change the store refused is tried again.
pub const STATUS_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Slowest bandwidth limit an admin may set (bytes per second each way):
/// below it an interactive ssh session would wait seconds per screen.
pub const MIN_RATE: u64 = 1_000;

/// Fastest bandwidth limit (bytes per second): far above any link, so a
/// larger number is a typo.
pub const MAX_RATE: u64 = 100_000_000_000;

/// A bandwidth limit's default burst is this much of its rate: short
/// enough that a limited stream keeps its rate over a second, long enough
/// that small requests never wait.
pub const RATE_BURST_TIME: Duration = Duration::from_millis(100);

/// Smallest burst: one SSH packet of the largest size peers use
/// (32 KiB) with room, so a packet never waits longer than its own size
/// needs.
pub const MIN_BURST: u64 = 64 * 1024;

/// Bytes a connection's task reads and writes before it lets other tasks
/// run (fair share of the relay's cores between connections, so tenants):
/// a quarter MiB is about a quarter of a millisecond of sealing and
/// opening, so another tenant's 64-byte message waits that long per busy
/// connection ahead of it, while the bulk stream's cost (one yield per
/// quarter MiB) stays far below a percent.
pub const CONNECTION_SLICE_BYTES: u64 = 256 * 1024;

/// A connection that moved a whole [`CONNECTION_SLICE_BYTES`] within this
/// long counts as bulk: it takes turns in its tenant's fair share of the
/// relay's workers (`ssh::fair`) until it has been this long without
/// finishing another slice.
pub const BULK_HOLD: Duration = Duration::from_millis(100);
