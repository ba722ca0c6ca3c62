//! One peer run: join, negotiate, connect, exchange, report.
//!
//! The run is a single task with one `select!` loop over three inputs: hub messages, events
//! that the WebRTC stack's callbacks forward into a bounded channel (tagged with the
//! generation of the peer connection that raised them, so a connection dropped after an
//! offer collision cannot disturb its successor), and timers (keepalive, grace). All state
//! lives in [`Run`] and is changed only by that loop.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, mpsc};
use webrtc::api::APIBuilder;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_init::RTCDataChannelInit;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

use crate::protocol::{self, CHUNK, Exchange, ExchangeEvent, Sent};
use crate::signal::{ClientMessage, HubMessage, SignalClient};
use crate::{Diagnosis, Event, IceServer, Payload, PeerConfig, PeerError, Report, Stage};

/// The data channel's label.
pub const CHANNEL_LABEL: &str = "turnpike";
/// How long a peer whose own message is confirmed waits for the other peer's message.
const GRACE: Duration = Duration::from_secs(2);
/// How long a finished peer waits for the other's `bye` before closing.
const LINGER: Duration = Duration::from_secs(1);
/// Keepalive period on the hub socket (the hub closes idle sockets after 60 s).
const PING_EVERY: Duration = Duration::from_secs(20);
/// Bytes queued on the data channel above which file sending pauses.
const HIGH_WATER: usize = 1024 * 1024;
/// Limit on one TURN allocation probe while diagnosing a failure.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// How a run ended: the report, and the error if it failed.
#[derive(Debug)]
pub struct Outcome {
    /// The summary (also filled in on failure, as far as the run got).
    pub report: Report,
    /// Why the run failed; `None` when the payload went both ways.
    pub error: Option<PeerError>,
}

impl Outcome {
    /// Whether the data channel carried the payload and its answer.
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
}

/// Runs one peer: joins `config.room` on the hub, connects to the other peer, exchanges the
/// payload, and returns the outcome. `on_event` sees progress as it happens. Never takes
/// longer than `config.timeout` plus a few seconds of diagnosis and closing.
pub async fn run(config: PeerConfig, on_event: &mut (dyn FnMut(Event) + Send)) -> Outcome {
    let (tx, rx) = mpsc::channel(256);
    let mut r = Run {
        cfg: &config,
        on_event,
        report: Report {
            room: config.room.clone(),
            ..Report::default()
        },
        stage: Stage::Joining,
        me: String::new(),
        other: None,
        peer_known_at: None,
        ice_servers: Vec::new(),
        pc: None,
        generation: 0,
        dc: None,
        tx,
        rx,
        offerer: false,
        offer_pending: false,
        remote_set: false,
        pending_candidates: Vec::new(),
        gathered: BTreeSet::new(),
        remote_types: BTreeSet::new(),
        signaled: Vec::new(),
        exchange: Exchange::new(None),
        file: None,
        sent_at: None,
        opened: false,
        confirmed_at: None,
        peer_bye: false,
        hub_alive: true,
        grace_over: false,
    };
    let result = match tokio::time::timeout(config.timeout, r.drive()).await {
        Ok(result) => result,
        Err(_) => {
            let diagnosis = if r.stage == Stage::Connecting {
                Some(r.diagnose().await)
            } else {
                None
            };
            Err(PeerError::Timeout {
                secs: config.timeout.as_secs(),
                stage: r.stage,
                diagnosis,
            })
        }
    };
    r.close_peer_connection().await;
    let mut report = r.report;
    report.error = result.as_ref().err().map(|e| e.to_string());
    Outcome {
        report,
        error: result.err(),
    }
}

/// A file ready to send: its name, size and checksum, computed before joining.
struct FileToSend {
    path: PathBuf,
    name: String,
    size: u64,
    sha256: String,
}

enum Internal {
    Candidate(Option<RTCIceCandidate>),
    Ice(RTCIceConnectionState),
    Pc(RTCPeerConnectionState),
    Channel(Arc<RTCDataChannel>),
    Open,
    Message(DataChannelMessage),
    Close,
    FileSent(Result<u64, String>),
}

struct Tagged {
    generation: u32,
    event: Internal,
}

struct Run<'a> {
    cfg: &'a PeerConfig,
    on_event: &'a mut (dyn FnMut(Event) + Send),
    report: Report,
    stage: Stage,
    me: String,
    other: Option<String>,
    peer_known_at: Option<Instant>,
    ice_servers: Vec<IceServer>,
    pc: Option<Arc<RTCPeerConnection>>,
    generation: u32,
    dc: Option<Arc<RTCDataChannel>>,
    tx: mpsc::Sender<Tagged>,
    rx: mpsc::Receiver<Tagged>,
    offerer: bool,
    offer_pending: bool,
    remote_set: bool,
    pending_candidates: Vec<RTCIceCandidateInit>,
    gathered: BTreeSet<String>,
    remote_types: BTreeSet<String>,
    signaled: Vec<(String, u16, String)>,
    exchange: Exchange,
    file: Option<FileToSend>,
    sent_at: Option<Instant>,
    opened: bool,
    confirmed_at: Option<Instant>,
    peer_bye: bool,
    hub_alive: bool,
    grace_over: bool,
}

impl Run<'_> {
    fn emit(&mut self, e: Event) {
        (self.on_event)(e);
    }

    async fn drive(&mut self) -> Result<(), PeerError> {
        if let Payload::File(path) = &self.cfg.payload {
            self.file = Some(prepare_file(path).await?);
        }
        let connect_limit = self.cfg.timeout.min(Duration::from_secs(5));
        let mut hub = SignalClient::connect(&self.cfg.signal_url, connect_limit).await?;
        hub.send(&ClientMessage::Join {
            room: self.cfg.room.clone(),
        })
        .await?;
        let (peers, hub_servers) = loop {
            match hub.recv().await? {
                HubMessage::Welcome {
                    peer_id,
                    room: _,
                    peers,
                    ice_servers,
                } => {
                    self.me = peer_id;
                    break (peers, ice_servers);
                }
                HubMessage::Error { code, message } => {
                    return Err(if code == "room-full" {
                        PeerError::RoomFull {
                            room: self.cfg.room.clone(),
                            message,
                        }
                    } else {
                        PeerError::Hub { code, message }
                    });
                }
                _ => {}
            }
        };
        self.report.peer_id = Some(self.me.clone());
        self.ice_servers = if self.cfg.ice_servers.is_empty() {
            hub_servers
        } else {
            self.cfg.ice_servers.clone()
        };
        if self.cfg.relay_only && !self.ice_servers.iter().any(has_turn_udp) {
            return Err(PeerError::Config(
                "--relay-only needs a TURN server with a turn:…?transport=udp URL, and there is none (the hub offered none and no --ice-server gave one)".into(),
            ));
        }
        let servers = self.ice_servers.len();
        self.emit(Event::Joined {
            peer_id: self.me.clone(),
            room: self.cfg.room.clone(),
            others: peers.len(),
            ice_servers: servers,
        });
        if let Some(first) = peers.first() {
            // We joined second: we make the offer.
            self.peer_found(first.clone(), true);
            self.new_peer_connection().await?;
            self.make_offer(&mut hub).await?;
        } else {
            self.stage = Stage::WaitingForPeer;
            self.emit(Event::Waiting);
        }

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            if self.finished() {
                break;
            }
            let grace = self
                .confirmed_at
                .map(|t| GRACE.saturating_sub(t.elapsed()))
                .unwrap_or(GRACE);
            let waiting_grace = self.exchange.is_confirmed() && !self.exchange.is_receiving_file();
            tokio::select! {
                m = hub.recv(), if self.hub_alive => match m {
                    Ok(m) => self.on_hub(m, &mut hub).await?,
                    Err(e) if self.opened => {
                        tracing::debug!(error = %e, "hub connection ended after the data channel opened");
                        self.hub_alive = false;
                    }
                    Err(e) => return Err(e),
                },
                Some(t) = self.rx.recv() => {
                    if t.generation == self.generation {
                        self.on_internal(t.event, &mut hub).await?;
                    }
                }
                _ = ping.tick(), if self.hub_alive => {
                    self.send_hub(&mut hub, ClientMessage::Ping).await?;
                }
                _ = tokio::time::sleep(grace), if waiting_grace => {
                    // The other peer sent nothing to answer (a browser may not): we are done.
                    self.grace_over = true;
                }
            }
        }
        self.emit(Event::Done);
        self.finish(hub).await;
        Ok(())
    }

    /// Our payload is confirmed and the other peer's was answered (or it sent none within
    /// the grace period).
    fn finished(&self) -> bool {
        self.exchange.is_confirmed()
            && !self.exchange.is_receiving_file()
            && (self.exchange.answered() > 0 || self.grace_over)
    }

    /// Says bye, lingers briefly so the last answer reaches the other peer, leaves the room.
    async fn finish(&mut self, mut hub: SignalClient) {
        if self.hub_alive {
            if let Some(other) = self.other.clone() {
                let _ = hub.send(&ClientMessage::Bye { to: other }).await;
            }
            let until = tokio::time::Instant::now() + LINGER;
            while !self.peer_bye {
                tokio::select! {
                    m = hub.recv() => match m {
                        Ok(HubMessage::Bye { from }) if Some(&from) == self.other.as_ref() => self.peer_bye = true,
                        Ok(HubMessage::PeerLeft { peer_id }) if Some(&peer_id) == self.other.as_ref() => self.peer_bye = true,
                        Ok(_) => {}
                        Err(_) => break,
                    },
                    Some(t) = self.rx.recv() => {
                        if t.generation == self.generation && matches!(t.event, Internal::Close) {
                            self.peer_bye = true;
                        }
                    }
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            let _ = hub.send(&ClientMessage::Leave).await;
        }
        hub.close().await;
    }

    async fn close_peer_connection(&mut self) {
        self.dc = None;
        if let Some(pc) = self.pc.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
        }
    }

    async fn send_hub(
        &mut self,
        hub: &mut SignalClient,
        m: ClientMessage,
    ) -> Result<(), PeerError> {
        if !self.hub_alive {
            return Ok(());
        }
        match hub.send(&m).await {
            Ok(()) => Ok(()),
            Err(_) if self.opened => {
                self.hub_alive = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn peer_found(&mut self, peer_id: String, offerer: bool) {
        self.offerer = offerer;
        self.peer_known_at = Some(Instant::now());
        self.report.remote_peer_id = Some(peer_id.clone());
        self.other = Some(peer_id.clone());
        self.stage = Stage::Connecting;
        self.emit(Event::PeerFound { peer_id, offerer });
    }

    async fn on_hub(&mut self, m: HubMessage, hub: &mut SignalClient) -> Result<(), PeerError> {
        match m {
            HubMessage::PeerJoined { peer_id } if self.other.is_none() => {
                self.peer_found(peer_id, false);
                // The answerer creates its connection at once, so that gathering starts as
                // soon as the offer is applied.
                self.new_peer_connection().await?;
            }
            HubMessage::PeerLeft { peer_id } if Some(&peer_id) == self.other.as_ref() => {
                return Err(PeerError::PeerLeft(peer_id));
            }
            HubMessage::Bye { from } if Some(&from) == self.other.as_ref() => {
                self.peer_bye = true;
                if !self.opened {
                    return Err(PeerError::PeerLeft(from));
                }
            }
            HubMessage::Offer { from, sdp } => self.on_offer(from, sdp, hub).await?,
            HubMessage::Answer { from, sdp } if Some(&from) == self.other.as_ref() => {
                if !self.offer_pending {
                    tracing::debug!("answer without a pending offer: ignored");
                    return Ok(());
                }
                let pc = self.pc()?;
                pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
                    .await?;
                self.offer_pending = false;
                self.remote_description_set().await;
            }
            HubMessage::Candidate { from, candidate } if Some(&from) == self.other.as_ref() => {
                let Some(c) = candidate else { return Ok(()) };
                let init: RTCIceCandidateInit = match serde_json::from_value(c) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::debug!(error = %e, "unreadable remote candidate: ignored");
                        return Ok(());
                    }
                };
                if init.candidate.is_empty() {
                    return Ok(()); // a browser's end-of-candidates marker
                }
                if let Some((addr, port, typ)) = parse_candidate(&init.candidate) {
                    self.remote_types.insert(typ.clone());
                    self.signaled.push((addr, port, typ));
                }
                if self.remote_set {
                    if let Some(pc) = &self.pc {
                        if let Err(e) = pc.add_ice_candidate(init).await {
                            tracing::debug!(error = %e, "remote candidate refused");
                        }
                    }
                } else {
                    self.pending_candidates.push(init);
                }
            }
            HubMessage::Error { code, message } => {
                if self.opened {
                    tracing::debug!(%code, %message, "hub error after the data channel opened");
                } else {
                    return Err(PeerError::Hub { code, message });
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_offer(
        &mut self,
        from: String,
        sdp: String,
        hub: &mut SignalClient,
    ) -> Result<(), PeerError> {
        match &self.other {
            None => {
                self.peer_found(from.clone(), false);
                self.new_peer_connection().await?;
            }
            Some(o) if *o != from => return Ok(()),
            Some(_) => {}
        }
        if self.offerer {
            // Offers crossed: the smaller peer id yields and answers.
            if self.me < from {
                self.emit(Event::Yielded);
                self.offerer = false;
                self.offer_pending = false;
                self.new_peer_connection().await?;
            } else {
                return Ok(());
            }
        }
        let pc = self.pc()?;
        pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
            .await?;
        let answer = pc.create_answer(None).await?;
        let sdp = answer.sdp.clone();
        pc.set_local_description(answer).await?;
        self.send_hub(hub, ClientMessage::Answer { to: from, sdp })
            .await?;
        self.remote_description_set().await;
        Ok(())
    }

    async fn remote_description_set(&mut self) {
        self.remote_set = true;
        let Some(pc) = self.pc.clone() else { return };
        for c in std::mem::take(&mut self.pending_candidates) {
            if let Err(e) = pc.add_ice_candidate(c).await {
                tracing::debug!(error = %e, "remote candidate refused");
            }
        }
    }

    fn pc(&self) -> Result<Arc<RTCPeerConnection>, PeerError> {
        self.pc
            .clone()
            .ok_or_else(|| PeerError::Protocol("no peer connection yet".into()))
    }

    async fn make_offer(&mut self, hub: &mut SignalClient) -> Result<(), PeerError> {
        let pc = self.pc()?;
        let dc = pc
            .create_data_channel(
                CHANNEL_LABEL,
                Some(RTCDataChannelInit {
                    ordered: Some(true),
                    ..Default::default()
                }),
            )
            .await?;
        wire_channel(&dc, self.tx.clone(), self.generation);
        self.dc = Some(dc);
        let offer = pc.create_offer(None).await?;
        let sdp = offer.sdp.clone();
        pc.set_local_description(offer).await?;
        self.offer_pending = true;
        let to = self.other.clone().unwrap_or_default();
        self.send_hub(hub, ClientMessage::Offer { to, sdp }).await
    }

    /// Creates a fresh peer connection (closing any previous one) with our ICE servers.
    async fn new_peer_connection(&mut self) -> Result<(), PeerError> {
        self.close_peer_connection().await;
        self.generation += 1;
        self.remote_set = false;
        self.pending_candidates.clear();
        let mut se = SettingEngine::default();
        // Two peers on one machine (the tests, two terminals on a laptop) meet over loopback;
        // the webrtc crate skips loopback addresses unless told otherwise.
        se.set_include_loopback_candidate(true);
        // No multicast: a browser's `.local` host candidates are not resolved, and the
        // browser's checks show up as peer-reflexive candidates instead.
        se.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        if self.cfg.relay_only {
            // ICE waits 2 s for better pairs before it nominates a relayed one; with relay
            // candidates only there is none to wait for.
            se.set_relay_acceptance_min_wait(Some(Duration::ZERO));
        }
        if !self.cfg.interfaces.is_empty() {
            let allowed = self.cfg.interfaces.clone();
            se.set_interface_filter(Box::new(move |name: &str| {
                allowed.iter().any(|a| a == name)
            }));
        }
        let api = APIBuilder::new().with_setting_engine(se).build();
        let config = RTCConfiguration {
            ice_servers: self.ice_servers.iter().map(to_rtc).collect(),
            ice_transport_policy: if self.cfg.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            },
            ..Default::default()
        };
        let pc = Arc::new(api.new_peer_connection(config).await?);
        let generation = self.generation;
        let tx = self.tx.clone();
        pc.on_ice_candidate(Box::new(move |c| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx
                    .send(Tagged {
                        generation,
                        event: Internal::Candidate(c),
                    })
                    .await;
            })
        }));
        let tx = self.tx.clone();
        pc.on_ice_connection_state_change(Box::new(move |s| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx
                    .send(Tagged {
                        generation,
                        event: Internal::Ice(s),
                    })
                    .await;
            })
        }));
        let tx = self.tx.clone();
        pc.on_peer_connection_state_change(Box::new(move |s| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx
                    .send(Tagged {
                        generation,
                        event: Internal::Pc(s),
                    })
                    .await;
            })
        }));
        let tx = self.tx.clone();
        pc.on_data_channel(Box::new(move |dc| {
            let tx = tx.clone();
            Box::pin(async move {
                if dc.label() != CHANNEL_LABEL {
                    return;
                }
                // Handlers go on before this callback returns: the stack starts reading
                // only afterwards, so no message can be missed.
                wire_channel(&dc, tx.clone(), generation);
                let _ = tx
                    .send(Tagged {
                        generation,
                        event: Internal::Channel(dc),
                    })
                    .await;
            })
        }));
        self.pc = Some(pc);
        Ok(())
    }

    async fn on_internal(&mut self, e: Internal, hub: &mut SignalClient) -> Result<(), PeerError> {
        match e {
            Internal::Candidate(Some(c)) => {
                let typ = c.typ.to_string();
                if self.gathered.insert(typ.clone()) {
                    self.emit(Event::Gathered(typ));
                }
                let json = c.to_json()?;
                let value = serde_json::to_value(json).ok();
                if let Some(to) = self.other.clone() {
                    self.send_hub(
                        hub,
                        ClientMessage::Candidate {
                            to,
                            candidate: value,
                        },
                    )
                    .await?;
                }
            }
            Internal::Candidate(None) => {
                if let Some(to) = self.other.clone() {
                    self.send_hub(
                        hub,
                        ClientMessage::Candidate {
                            to,
                            candidate: None,
                        },
                    )
                    .await?;
                }
            }
            Internal::Ice(s) => {
                self.emit(Event::IceState(s.to_string()));
                if s == RTCIceConnectionState::Failed && !self.opened {
                    return Err(PeerError::NoRoute(self.diagnose().await));
                }
            }
            Internal::Pc(s) => {
                self.emit(Event::ConnectionState(s.to_string()));
                if s == RTCPeerConnectionState::Failed {
                    if self.opened {
                        return Err(PeerError::PeerLeft(self.other.clone().unwrap_or_default()));
                    }
                    return Err(PeerError::NoRoute(self.diagnose().await));
                }
            }
            Internal::Channel(dc) => {
                if self.dc.is_none() {
                    self.dc = Some(dc);
                }
            }
            Internal::Open => self.on_open().await?,
            Internal::Message(m) => {
                self.on_open().await?;
                self.report.bytes_received += m.data.len() as u64;
                let step = if m.is_string {
                    self.exchange.handle_text(&String::from_utf8_lossy(&m.data))
                } else {
                    self.exchange.handle_binary(&m.data)
                };
                if let Some(reply) = step.reply {
                    self.send_text(&reply).await?;
                }
                match step.event {
                    Some(ExchangeEvent::Confirmed) => {
                        self.confirmed_at = Some(Instant::now());
                        if let Some(t) = self.sent_at {
                            let ms = t.elapsed().as_secs_f64() * 1000.0;
                            if self.file.is_some() {
                                self.report.transfer_ms = Some(ms.round() as u64);
                            } else {
                                self.report.rtt_ms = Some((ms * 10.0).round() / 10.0);
                            }
                        }
                        self.emit(Event::Received(ExchangeEvent::Confirmed));
                    }
                    Some(ExchangeEvent::Rejected(r)) => return Err(PeerError::FileRejected(r)),
                    Some(ExchangeEvent::Ignored) | None => {}
                    Some(e) => self.emit(Event::Received(e)),
                }
            }
            Internal::Close => {
                if !self.finished() {
                    return Err(PeerError::PeerLeft(self.other.clone().unwrap_or_default()));
                }
            }
            Internal::FileSent(Ok(n)) => self.report.bytes_sent += n,
            Internal::FileSent(Err(e)) => {
                return Err(PeerError::Protocol(format!("sending the file failed: {e}")));
            }
        }
        Ok(())
    }

    async fn send_text(&mut self, text: &str) -> Result<(), PeerError> {
        let dc = self
            .dc
            .clone()
            .ok_or_else(|| PeerError::Protocol("no data channel".into()))?;
        dc.send_text(text.to_owned()).await?;
        self.report.bytes_sent += text.len() as u64;
        Ok(())
    }

    /// The data channel is open: record the path and send our payload (once).
    async fn on_open(&mut self) -> Result<(), PeerError> {
        if self.opened || self.dc.is_none() {
            return Ok(());
        }
        self.opened = true;
        self.stage = Stage::Exchanging;
        let setup_ms = self
            .peer_known_at
            .map(|t| t.elapsed().as_millis() as u64)
            .unwrap_or_default();
        self.report.connected = true;
        self.report.setup_ms = Some(setup_ms);
        let pair = match &self.pc {
            Some(pc) => {
                pc.sctp()
                    .transport()
                    .ice_transport()
                    .get_selected_candidate_pair()
                    .await
            }
            None => None,
        };
        let (local, remote, path) = match pair {
            Some(p) => {
                self.report.local_protocol = Some(p.local.protocol.to_string());
                let mut remote = p.remote.typ.to_string();
                // Checks from the other peer can arrive before its trickled candidate: ICE
                // then knows that address as peer-reflexive. When a signaled candidate has
                // the same address, report the type the other peer gave it.
                if remote == "prflx" {
                    if let Some((_, _, t)) = self.signaled.iter().find(|(a, port, _)| {
                        *port == p.remote.port && same_ip(a, &p.remote.address)
                    }) {
                        remote = t.clone();
                    }
                }
                (
                    p.local.typ.to_string(),
                    remote,
                    format!(
                        "{}:{} -> {}:{}",
                        p.local.address, p.local.port, p.remote.address, p.remote.port
                    ),
                )
            }
            None => (
                "unknown".into(),
                "unknown".into(),
                "no selected pair".into(),
            ),
        };
        self.report.local_candidate_type = Some(local.clone());
        self.report.remote_candidate_type = Some(remote.clone());
        self.emit(Event::Connected {
            local,
            remote,
            pair: path,
            setup_ms,
        });
        self.sent_at = Some(Instant::now());
        match &self.cfg.payload {
            Payload::File(_) => {
                let Some(f) = &self.file else {
                    return Ok(());
                };
                let header = protocol::file_header(&f.name, f.size, &f.sha256);
                let (path, sha, size, name) =
                    (f.path.clone(), f.sha256.clone(), f.size, f.name.clone());
                self.exchange.set_sent(Sent::File { sha256: sha });
                self.send_text(&header).await?;
                let dc = self.dc.clone();
                let tx = self.tx.clone();
                let generation = self.generation;
                if let Some(dc) = dc {
                    tokio::spawn(async move {
                        let r = send_file(&dc, &path).await;
                        let _ = tx
                            .send(Tagged {
                                generation,
                                event: Internal::FileSent(r),
                            })
                            .await;
                    });
                }
                self.emit(Event::Sent(format!("file {name:?} ({size} bytes)")));
            }
            Payload::Message(text) => {
                let text = text.clone();
                self.exchange.set_sent(Sent::Text(text.clone()));
                self.send_text(&text).await?;
                self.emit(Event::Sent(format!("{text:?}")));
            }
            Payload::Default => {
                let text = format!("hello from {}", self.me);
                self.exchange.set_sent(Sent::Text(text.clone()));
                self.send_text(&text).await?;
                self.emit(Event::Sent(format!("{text:?}")));
            }
        }
        Ok(())
    }

    /// What ICE had, and whether each TURN server allocates (asked again, directly, since
    /// the webrtc crate only logs its TURN errors).
    async fn diagnose(&self) -> Diagnosis {
        let mut d = Diagnosis {
            gathered: self.gathered.iter().cloned().collect(),
            remote: self.remote_types.iter().cloned().collect(),
            turn: Vec::new(),
        };
        if self.gathered.contains("relay") {
            d.turn
                .push("TURN allocation worked (a relay candidate was gathered)".into());
            return d;
        }
        for s in &self.ice_servers {
            for url in &s.urls {
                if url.starts_with("turn") {
                    let verdict = probe_turn(url, s).await;
                    d.turn.push(format!("TURN {url}: {verdict}"));
                }
            }
        }
        if d.turn.is_empty() {
            d.turn.push("no TURN server configured".into());
        }
        d
    }
}

fn wire_channel(dc: &Arc<RTCDataChannel>, tx: mpsc::Sender<Tagged>, generation: u32) {
    let t = tx.clone();
    dc.on_open(Box::new(move || {
        Box::pin(async move {
            let _ = t
                .send(Tagged {
                    generation,
                    event: Internal::Open,
                })
                .await;
        })
    }));
    let t = tx.clone();
    dc.on_message(Box::new(move |m| {
        let t = t.clone();
        Box::pin(async move {
            let _ = t
                .send(Tagged {
                    generation,
                    event: Internal::Message(m),
                })
                .await;
        })
    }));
    dc.on_close(Box::new(move || {
        let t = tx.clone();
        Box::pin(async move {
            let _ = t
                .send(Tagged {
                    generation,
                    event: Internal::Close,
                })
                .await;
        })
    }));
}

async fn prepare_file(path: &std::path::Path) -> Result<FileToSend, PeerError> {
    let err = |source| PeerError::File {
        path: path.display().to_string(),
        source,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    Ok(FileToSend {
        path: path.to_owned(),
        name,
        size,
        sha256: protocol::hex(&hasher.finalize()),
    })
}

/// Sends the file in chunks of at most [`CHUNK`] bytes, pausing while more than
/// [`HIGH_WATER`] bytes wait in the channel's buffer.
async fn send_file(dc: &Arc<RTCDataChannel>, path: &std::path::Path) -> Result<u64, String> {
    let low = Arc::new(Notify::new());
    dc.set_buffered_amount_low_threshold(HIGH_WATER / 2).await;
    let l = low.clone();
    dc.on_buffered_amount_low(Box::new(move || {
        let l = l.clone();
        Box::pin(async move { l.notify_one() })
    }))
    .await;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let mut n = 0;
        // Fill a whole chunk (a read may return less).
        while n < CHUNK {
            let k = f.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            return Ok(sent);
        }
        while dc.buffered_amount().await > HIGH_WATER {
            // Bounded wait: a missed notification costs at most 50 ms.
            let _ = tokio::time::timeout(Duration::from_millis(50), low.notified()).await;
        }
        dc.send(&Bytes::copy_from_slice(&buf[..n]))
            .await
            .map_err(|e| e.to_string())?;
        sent += n as u64;
    }
}

/// Tries one TURN allocation with `server`'s credentials and says how it went.
async fn probe_turn(url: &str, server: &IceServer) -> String {
    use webrtc::ice::url::{ProtoType, SchemeType, Url};
    let parsed = match Url::parse_url(url) {
        Ok(u) => u,
        Err(e) => return format!("unusable URL ({e})"),
    };
    if parsed.scheme != SchemeType::Turn || parsed.proto != ProtoType::Udp {
        return "not used (this client speaks TURN over UDP only)".into();
    }
    let host = if parsed.host.contains(':') {
        format!("[{}]:{}", parsed.host, parsed.port)
    } else {
        format!("{}:{}", parsed.host, parsed.port)
    };
    let bind = if parsed.host.contains(':') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return format!("not probed ({e})"),
    };
    let cfg = webrtc::turn::client::ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: host,
        username: server.username.clone().unwrap_or_default(),
        password: server.credential.clone().unwrap_or_default(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    };
    let client = match webrtc::turn::client::Client::new(cfg).await {
        Ok(c) => c,
        Err(e) => return format!("not probed ({e})"),
    };
    if let Err(e) = client.listen().await {
        return format!("not probed ({e})");
    }
    let verdict = match tokio::time::timeout(PROBE_LIMIT, client.allocate()).await {
        Ok(Ok(_relay)) => "allocation works".to_owned(),
        Ok(Err(e)) => {
            let e = e.to_string();
            if e.contains("401") {
                format!("TURN authentication failed ({e})")
            } else {
                format!("allocation failed ({e})")
            }
        }
        Err(_) => format!("no answer within {} s", PROBE_LIMIT.as_secs()),
    };
    let _ = client.close().await;
    verdict
}

fn has_turn_udp(s: &IceServer) -> bool {
    s.urls
        .iter()
        .any(|u| u.starts_with("turn:") && !u.contains("transport=tcp"))
}

fn to_rtc(s: &IceServer) -> RTCIceServer {
    RTCIceServer {
        urls: s.urls.clone(),
        username: s.username.clone().unwrap_or_default(),
        credential: s.credential.clone().unwrap_or_default(),
    }
}

/// Address, port and `typ` of an SDP candidate line
/// (`candidate:FOUNDATION COMPONENT PROTO PRIORITY ADDRESS PORT typ TYPE …`).
fn parse_candidate(line: &str) -> Option<(String, u16, String)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.len() < 8 || w[6] != "typ" {
        return None;
    }
    Some((w[4].to_owned(), w[5].parse().ok()?, w[7].to_owned()))
}

fn same_ip(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_from_sdp_lines() {
        assert_eq!(
            parse_candidate("candidate:1 1 udp 2130706431 ::1 5000 typ host"),
            Some(("::1".into(), 5000, "host".into()))
        );
        assert_eq!(
            parse_candidate(
                "candidate:2 1 udp 16777215 192.0.2.4 5 typ relay raddr 0.0.0.0 rport 1"
            )
            .map(|c| c.2),
            Some("relay".into())
        );
        assert_eq!(parse_candidate("garbage"), None);
        assert!(same_ip("::1", "0:0:0:0:0:0:0:1"));
    }
}
