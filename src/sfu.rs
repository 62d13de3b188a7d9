//! The SFU in-process: natter-sfu's tokio shell, linked to the gateway through
//! [`SfuLink`], its notices relayed to the gateway, its counters on the gateway's `/metrics`.

use std::sync::Arc;

use anyhow::{Context, Result};
use natter_messaging::SfuNotices;
use natter_messaging::rooms::{BoxFuture, SfuAccess, SfuLink, SfuNotice};
use natter_sfu::config::SfuSettings;
use natter_sfu::shell::{self, SfuHandle};
use natter_sfu::{MediaKind, ParticipantId, SfuError, SfuEvent};
use natter_signaling::ProtocolError;
use natter_signaling::call::Media;

/// A running in-process SFU.
pub struct InProcessSfu {
    pub handle: SfuHandle,
    events: tokio::sync::mpsc::Receiver<SfuEvent>,
}

impl InProcessSfu {
    /// Binds and starts the SFU; a token secret is generated unless configured.
    pub async fn start(settings: &mut SfuSettings) -> Result<InProcessSfu> {
        if settings.token_secret.is_none() {
            let mut k = [0u8; 24];
            getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("random secret: {e}"))?;
            settings.token_secret = Some(k.iter().map(|b| format!("{b:02x}")).collect());
        }
        let (cfg, bind) = settings
            .build()
            .map_err(|e| anyhow::anyhow!("invalid [sfu] configuration: {e}"))?;
        let (handle, events, _task) = shell::spawn(cfg, Some(bind)).await.with_context(|| {
            format!(
                "cannot start the SFU on UDP {bind} (in use? set --sfu-listen ADDR, \
                 or --sfu-enabled false)"
            )
        })?;
        Ok(InProcessSfu { handle, events })
    }

    /// What the gateway needs to reach it.
    pub fn access(&self, settings: &SfuSettings) -> SfuAccess {
        SfuAccess {
            link: Arc::new(Link(self.handle.clone())),
            token_secret: settings
                .token_secret
                .clone()
                .expect("set by start")
                .into_bytes(),
        }
    }

    /// Relays the SFU's notices to the gateway until the SFU stops.
    pub fn relay(mut self, to: SfuNotices) {
        tokio::spawn(async move {
            while let Some(e) = self.events.recv().await {
                let n = match e {
                    SfuEvent::Offer {
                        participant,
                        sdp,
                        tracks,
                    } => SfuNotice::Offer {
                        participant: participant.0,
                        sdp,
                        tracks: tracks
                            .into_iter()
                            .map(|(mid, t, kind)| {
                                let kind = match kind {
                                    MediaKind::Audio => Media::Audio,
                                    MediaKind::Video => Media::Video,
                                };
                                (mid.to_string(), t.publisher.0, kind)
                            })
                            .collect(),
                    },
                    SfuEvent::Left {
                        participant,
                        reason,
                    } => SfuNotice::Left {
                        participant: participant.0,
                        reason,
                    },
                    SfuEvent::Speaker {
                        participant,
                        speaker,
                    } => SfuNotice::Speaker {
                        participant: participant.0,
                        speaker: speaker.0,
                    },
                    SfuEvent::Layers {
                        participant,
                        mid,
                        rids,
                    } => SfuNotice::Layers {
                        participant: participant.0,
                        mid: mid.to_string(),
                        rids,
                    },
                    SfuEvent::Connected(_) => continue,
                };
                to.notice(n);
            }
        });
    }
}

struct Link(SfuHandle);

fn refusal(e: SfuError) -> ProtocolError {
    ProtocolError::new(e.code(), e.to_string())
}

impl SfuLink for Link {
    fn join(
        &self,
        token: String,
        offer: String,
    ) -> BoxFuture<Result<(u64, String), ProtocolError>> {
        let h = self.0.clone();
        Box::pin(async move {
            let (id, answer) = h.join(token, offer).await.map_err(refusal)?;
            Ok((id.0, answer))
        })
    }

    fn answer(&self, participant: u64, sdp: String) -> BoxFuture<Result<(), ProtocolError>> {
        let h = self.0.clone();
        Box::pin(async move {
            h.answer(ParticipantId(participant), sdp)
                .await
                .map_err(refusal)
        })
    }

    fn leave(&self, participant: u64) -> BoxFuture<()> {
        let h = self.0.clone();
        Box::pin(async move {
            let _ = h.leave(ParticipantId(participant)).await;
        })
    }
}
