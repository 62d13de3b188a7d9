//! str0m's own DTLS (dimpl, on aws-lc-rs) with a shorter first retransmission timeout.
//!
//! dimpl resends a lost flight after 1 s, doubling each time, and a call's handshake is
//! four flights, one of them a certificate in several datagrams: behind 5 % loss each way a
//! relayed call took 0.8 s to set up at the median and 3 s at p95, almost all of it waiting
//! out these timers. libwebrtc starts its DTLS timer at twice the ICE round trip, no less
//! than 50 ms; str0m builds its DTLS before ICE has measured anything, so this starts at a
//! fixed [`FLIGHT_START_RTO`] and allows more doublings, keeping the same ~30 s of patience
//! as dimpl's defaults. Everything else is dimpl's default configuration as str0m sets it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

/// The first resend of a lost flight: longer than a relayed round trip on most links (a
/// spurious resend on a slower one costs a few duplicate datagrams).
pub const FLIGHT_START_RTO: Duration = Duration::from_millis(250);
/// Resends of one flight: 250 ms doubling six times is 31.75 s in all, as dimpl's 1 s
/// doubling four times is 31 s.
const FLIGHT_RETRIES: usize = 6;

/// The aws-lc-rs crypto str0m uses by default, with this module's DTLS.
pub fn crypto_provider() -> CryptoProvider {
    static DTLS: QuickDtls = QuickDtls;
    let mut provider = str0m::crypto::from_feature_flags();
    provider.dtls_provider = &DTLS;
    provider
}

#[derive(Debug)]
struct QuickDtls;

impl DtlsProvider for QuickDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        // ICE has checked the peer's address before DTLS runs: no cookie round trip.
        let mut builder = dimpl::Config::builder()
            .with_crypto_provider(str0m_aws_lc_rs::dimpl_crypto_provider())
            .use_server_cookie(false)
            .flight_start_rto(FLIGHT_START_RTO)
            .flight_retries(FLIGHT_RETRIES);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("DTLS configuration: {e}")))?,
        );
        let cert = cert.clone();
        let dtls = match version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            other => {
                return Err(CryptoError::Other(format!(
                    "DTLS version {other} is not supported"
                )));
            }
        };
        Ok(Box::new(Instance(dtls)))
    }
}

/// dimpl's connection under str0m's trait: every call passes straight through.
struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuickDtls")
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }
    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }
    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }
    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }
    fn is_active(&self) -> bool {
        self.0.is_active()
    }
    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }
    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}
