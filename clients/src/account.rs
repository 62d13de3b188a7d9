//! HTTP side of the client: registration, linking, blobs.

use natter_signaling::{DeviceId, ErrorCode, ProtocolError, UserId};
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// A device's identity and bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: UserId,
    pub device: DeviceId,
    pub primary: bool,
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CodeSent {
    pub phone: String,
    pub expires_in_s: u32,
    /// Present only when the server runs in development mode (`code_delivery = "log"`).
    pub dev_code: Option<String>,
}

/// State of a resumable upload.
#[derive(Debug, Clone, Deserialize)]
pub struct UploadState {
    pub upload_id: String,
    pub offset: u64,
    pub length: u64,
    pub complete: bool,
    pub blob: Option<String>,
}

#[derive(Deserialize)]
struct ErrorJson {
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
}

/// HTTP calls against one server, e.g. `http://127.0.0.1:8080`.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: String,
    http: reqwest::Client,
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Err(match serde_json::from_str::<ErrorJson>(&text) {
        Ok(e) => ClientError::Server(ProtocolError {
            retry_after_ms: e.retry_after_ms,
            ..ProtocolError::new(e.code, e.message)
        }),
        Err(_) => ClientError::Protocol(format!("HTTP {status}: {text}")),
    })
}

impl HttpClient {
    pub fn new(base: impl Into<String>) -> HttpClient {
        HttpClient {
            base: base.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// A client whose connections leave from `local` (e.g. one of 127.0.0.0/8, to act as
    /// another network in tests and load generators).
    pub fn with_local_address(base: impl Into<String>, local: std::net::IpAddr) -> HttpClient {
        HttpClient {
            base: base.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .local_address(local)
                .build()
                .expect("an HTTP client with a local address builds"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The WebSocket URL of this server.
    pub fn ws_url(&self) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| {
                self.base
                    .strip_prefix("http://")
                    .map(|r| format!("ws://{r}"))
            })
            .unwrap_or_else(|| self.base.clone());
        format!("{rest}/v1/ws")
    }

    pub async fn request_code(&self, phone: &str) -> Result<CodeSent, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/register/request", self.base))
            .json(&serde_json::json!({ "phone": phone }))
            .send()
            .await?;
        Ok(check(resp).await?.json().await?)
    }

    pub async fn verify(
        &self,
        phone: &str,
        code: &str,
        device_name: &str,
    ) -> Result<Credentials, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/register/verify", self.base))
            .json(&serde_json::json!({ "phone": phone, "code": code, "device_name": device_name }))
            .send()
            .await?;
        Ok(check(resp).await?.json().await?)
    }

    /// Registers `phone` against a server in development mode, which returns the code.
    pub async fn register_dev(
        &self,
        phone: &str,
        device_name: &str,
    ) -> Result<Credentials, ClientError> {
        let sent = self.request_code(phone).await?;
        let code = sent.dev_code.ok_or_else(|| {
            ClientError::Protocol(
                "the server does not return codes (not in development mode); use request_code + verify".into(),
            )
        })?;
        self.verify(phone, &code, device_name).await
    }

    /// Redeems a link code from the primary device for a new linked device.
    pub async fn link(&self, code: &str, device_name: &str) -> Result<Credentials, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/devices/link", self.base))
            .json(&serde_json::json!({ "code": code, "device_name": device_name }))
            .send()
            .await?;
        Ok(check(resp).await?.json().await?)
    }

    pub async fn upload_create(
        &self,
        token: &str,
        length: u64,
    ) -> Result<UploadState, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/uploads", self.base))
            .bearer_auth(token)
            .header("upload-length", length)
            .send()
            .await?;
        Ok(check(resp).await?.json().await?)
    }

    pub async fn upload_status(
        &self,
        token: &str,
        upload_id: &str,
    ) -> Result<UploadState, ClientError> {
        let resp = self
            .http
            .get(format!("{}/v1/uploads/{upload_id}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        Ok(check(resp).await?.json().await?)
    }

    pub async fn upload_append(
        &self,
        token: &str,
        upload_id: &str,
        offset: u64,
        chunk: Vec<u8>,
    ) -> Result<UploadState, ClientError> {
        let resp = self
            .http
            .patch(format!("{}/v1/uploads/{upload_id}", self.base))
            .bearer_auth(token)
            .header("upload-offset", offset)
            .body(chunk)
            .send()
            .await?;
        Ok(check(resp).await?.json().await?)
    }

    /// Uploads `data` (already encrypted) in chunks, resuming from the server's offset after
    /// a failed chunk; returns the blob's SHA-256 (hex). `progress` sees bytes confirmed so far.
    pub async fn upload(
        &self,
        token: &str,
        data: &[u8],
        chunk: usize,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<String, ClientError> {
        let chunk = chunk.max(1);
        let state = self.upload_create(token, data.len() as u64).await?;
        let id = state.upload_id;
        let mut offset = 0u64;
        let mut retries = 0;
        loop {
            let end = (offset as usize + chunk).min(data.len());
            match self
                .upload_append(token, &id, offset, data[offset as usize..end].to_vec())
                .await
            {
                Ok(s) => {
                    progress(s.offset, s.length);
                    if s.complete {
                        return s.blob.ok_or_else(|| {
                            ClientError::Protocol("complete upload without a blob hash".into())
                        });
                    }
                    offset = s.offset;
                    retries = 0;
                }
                Err(e) if retries < 3 && !matches!(e, ClientError::Server(_)) => {
                    retries += 1;
                    offset = self.upload_status(token, &id).await?.offset;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Downloads a blob, from byte `from` on.
    pub async fn download(
        &self,
        token: &str,
        hash: &str,
        from: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let mut req = self
            .http
            .get(format!("{}/v1/blobs/{hash}", self.base))
            .bearer_auth(token);
        if from > 0 {
            req = req.header("range", format!("bytes={from}-"));
        }
        let resp = check(req.send().await?).await?;
        Ok(resp.bytes().await?.to_vec())
    }
}
