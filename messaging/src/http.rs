//! HTTP routes: registration and device linking, blob upload/download, the WebSocket
//! endpoint, health and metrics. Errors are JSON `{"code", "message"[, "retry_after_ms"]}`
//! with the status that goes with the code.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Path as UrlPath, Request, State,
};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use natter_signaling::codec::Encoding;
use natter_signaling::limits::MAX_FRAME_BYTES;
use natter_signaling::{DeviceId, ErrorCode, ProtocolError, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::CodeDelivery;
use crate::conn;
use crate::http_parse::{
    check_append, choose_encoding, parse_range_start, parse_u64_header, valid_blob_hash,
    valid_upload_id,
};
use crate::state::{NetKey, SharedState, take};
use crate::store::{AuthInfo, Core, Registered, normalize_phone, now_ms, random_bytes};

/// Largest WebSocket message read at all; between [`MAX_FRAME_BYTES`] and this, the client
/// gets a `too_large` error frame; above it the socket is closed (1009).
const WS_HARD_LIMIT: usize = 4 * MAX_FRAME_BYTES;

/// An error answer.
#[derive(Debug)]
pub struct ApiError(pub ProtocolError);

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        ApiError(e)
    }
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status =
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            status,
            Json(ErrorJson {
                code: e.code,
                message: &e.message,
                retry_after_ms: e.retry_after_ms,
            }),
        )
            .into_response();
        if let Some(ms) = e.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(e.code);
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON body whose rejections use natter's error format.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                let code = match &rej {
                    JsonRejection::BytesRejection(_) => ErrorCode::TooLarge,
                    _ => ErrorCode::BadFrame,
                };
                Err(ApiError(ProtocolError::new(code, rej.body_text())))
            }
        }
    }
}

/// The device behind an `Authorization: Bearer` header.
pub struct Authed(pub AuthInfo);

impl FromRequestParts<SharedState> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &SharedState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned())
            .ok_or_else(|| {
                ApiError(ProtocolError::new(
                    ErrorCode::Unauthorized,
                    "missing `Authorization: Bearer <token>` header",
                ))
            })?;
        let auth = st
            .store
            .call(move |core: &mut Core| core.authenticate(&token))
            .await?;
        Ok(Authed(auth))
    }
}

pub struct UploadLocks(Mutex<HashSet<String>>);

impl UploadLocks {
    pub fn new() -> Self {
        UploadLocks(Mutex::new(HashSet::new()))
    }
}

impl Default for UploadLocks {
    fn default() -> Self {
        Self::new()
    }
}

/// Holds an upload for one writer at a time.
struct UploadGuard<'a> {
    locks: &'a UploadLocks,
    id: String,
}

impl<'a> UploadGuard<'a> {
    fn acquire(locks: &'a UploadLocks, id: &str) -> ApiResult<UploadGuard<'a>> {
        if !locks.0.lock().unwrap().insert(id.to_owned()) {
            return Err(ApiError(ProtocolError::new(
                ErrorCode::Conflict,
                "another request is writing this upload",
            )));
        }
        Ok(UploadGuard {
            locks,
            id: id.to_owned(),
        })
    }
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        self.locks.0.lock().unwrap().remove(&self.id);
    }
}

pub fn router(st: SharedState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/ws", get(ws_upgrade))
        .route("/v1/register/request", post(register_request))
        .route("/v1/register/verify", post(register_verify))
        .route("/v1/devices/link", post(link_complete))
        .route("/v1/uploads", post(upload_create))
        .route(
            "/v1/uploads/{id}",
            get(upload_status)
                .head(upload_status)
                .patch(upload_append.layer(middleware::from_fn(close_on_refusal))),
        )
        .route("/v1/blobs/{hash}", get(blob_get))
        .route_layer(middleware::from_fn_with_state(st.clone(), track))
        .with_state(st)
}

async fn track(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    st.metrics
        .http_requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    if let Some(code) = resp.extensions().get::<ErrorCode>() {
        st.metrics.errors.with_label_values(&[code.as_str()]).inc();
    }
    resp
}

/// A refused upload chunk leaves its body unread, so the connection cannot carry another
/// request: say so, or the client's next request on it fails.
async fn close_on_refusal(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if !resp.status().is_success() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn index() -> &'static str {
    "natter messaging gateway\n\
     \n\
     GET  /v1/ws                  WebSocket (subprotocol natter.v1.json or natter.v1.bin)\n\
     POST /v1/register/request    {\"phone\"} -> a verification code is sent\n\
     POST /v1/register/verify     {\"phone\",\"code\",\"device_name\"} -> device token\n\
     POST /v1/devices/link        {\"code\",\"device_name\"} -> linked device token\n\
     POST /v1/uploads             Upload-Length: N -> resumable upload\n\
     PATCH /v1/uploads/{id}       Upload-Offset: K, body -> appends\n\
     HEAD /v1/uploads/{id}        -> Upload-Offset\n\
     GET  /v1/blobs/{sha256}      -> the blob (Range: bytes=K- resumes)\n\
     GET  /healthz, /metrics\n"
}

async fn healthz(State(st): State<SharedState>) -> ApiResult<Json<serde_json::Value>> {
    if st.shutdown.is_cancelled() {
        return Err(ApiError(ProtocolError::new(
            ErrorCode::Unavailable,
            "shutting down",
        )));
    }
    let ping = st.store.call(|_core: &mut Core| Ok(()));
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(())) => Ok(Json(serde_json::json!({
            "status": "ok",
            "connections": st.hub.connection_count(),
        }))),
        Ok(Err(e)) => Err(ApiError(e)),
        Err(_) => Err(ApiError(ProtocolError::new(
            ErrorCode::Unavailable,
            "storage did not answer within 2 s",
        ))),
    }
}

async fn metrics(State(st): State<SharedState>) -> impl IntoResponse {
    st.metrics.store_queue.set(st.store.queued() as i64);
    let (rooms, participants) = st.rooms.counts();
    st.metrics.rooms.set(rooms as i64);
    st.metrics.room_participants.set(participants as i64);
    let mut text = st.metrics.render();
    if let Some(extra) = &st.extra_metrics {
        text.push_str(&extra());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn ws_upgrade(
    State(st): State<SharedState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    if st.shutdown.is_cancelled() {
        return Err(ApiError(ProtocolError::new(
            ErrorCode::Unavailable,
            "shutting down",
        )));
    }
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .map(|v| v.as_bytes());
    let chosen = choose_encoding(offered)
        .map_err(|m| ApiError(ProtocolError::new(ErrorCode::UnsupportedVersion, m)))?;
    let enc = chosen.unwrap_or(Encoding::Json);
    let mut ws = ws
        .max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        .read_buffer_size(4096)
        .write_buffer_size(8192);
    if let Some(enc) = chosen {
        ws = ws.protocols([enc.subprotocol()]);
    }
    let token = st.sockets.token();
    Ok(ws.on_upgrade(move |socket| async move {
        conn::serve(socket, enc, st).await;
        drop(token);
    }))
}

fn client_net(addr: &SocketAddr) -> NetKey {
    NetKey::of(addr.ip())
}

#[derive(Deserialize)]
struct CodeRequest {
    phone: String,
}

#[derive(Serialize)]
struct CodeResponse {
    phone: String,
    expires_in_s: u32,
    /// Development mode only (`code_delivery = "log"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    dev_code: Option<String>,
}

async fn register_request(
    State(st): State<SharedState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<CodeRequest>,
) -> ApiResult<Json<CodeResponse>> {
    let phone = normalize_phone(&req.phone)?;
    take(&st.limits.register_ip, &client_net(&addr), 1.0)?;
    take(&st.limits.register_phone, &phone, 1.0)?;
    let p = phone.clone();
    let code = st
        .store
        .try_call(move |core: &mut Core| core.request_code(&p, now_ms()))
        .await?;
    let dev_code = match st.cfg.code_delivery {
        CodeDelivery::Log => {
            tracing::info!(%phone, %code, "registration code (development mode: code_delivery = log)");
            Some(code)
        }
        CodeDelivery::Webhook => {
            let url = st.cfg.code_webhook_url.as_deref().unwrap_or_default();
            let sent = st
                .http
                .post(url)
                .timeout(Duration::from_secs(10))
                .json(&serde_json::json!({ "phone": phone, "code": code }))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "code webhook refused the code");
                    return Err(ApiError(ProtocolError::new(
                        ErrorCode::Unavailable,
                        "the verification code could not be delivered; try again later",
                    )));
                }
                Err(e) => {
                    tracing::warn!("code webhook failed: {e}");
                    return Err(ApiError(ProtocolError::new(
                        ErrorCode::Unavailable,
                        "the verification code could not be delivered; try again later",
                    )));
                }
            }
        }
    };
    Ok(Json(CodeResponse {
        phone,
        expires_in_s: st.cfg.code_ttl_s,
        dev_code,
    }))
}

#[derive(Deserialize)]
struct VerifyRequest {
    phone: String,
    code: String,
    #[serde(default = "default_device_name")]
    device_name: String,
}

fn default_device_name() -> String {
    "primary".into()
}

#[derive(Serialize)]
struct DeviceCredentials {
    user: UserId,
    device: DeviceId,
    primary: bool,
    token: String,
}

impl From<Registered> for DeviceCredentials {
    fn from(r: Registered) -> Self {
        DeviceCredentials {
            user: r.user,
            device: r.device,
            primary: r.primary,
            token: r.token,
        }
    }
}

async fn register_verify(
    State(st): State<SharedState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> ApiResult<Json<DeviceCredentials>> {
    let phone = normalize_phone(&req.phone)?;
    let net = client_net(&addr);
    take(&st.limits.register_ip, &net, 1.0)?;
    let network = net.as_text();
    let reg = st
        .store
        .try_call(move |core: &mut Core| {
            core.verify_code(&phone, &req.code, &req.device_name, &network, now_ms())
        })
        .await??;
    Ok(Json(reg.into()))
}

#[derive(Deserialize)]
struct LinkRequest {
    code: String,
    device_name: String,
}

async fn link_complete(
    State(st): State<SharedState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<LinkRequest>,
) -> ApiResult<Json<DeviceCredentials>> {
    take(&st.limits.register_ip, &client_net(&addr), 1.0)?;
    let reg = st
        .store
        .try_call(move |core: &mut Core| core.complete_link(&req.code, &req.device_name, now_ms()))
        .await?;
    Ok(Json(reg.into()))
}

const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");

fn header_u64(headers: &HeaderMap, name: &HeaderName) -> ApiResult<Option<u64>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => parse_u64_header(v.as_bytes()).map(Some).ok_or_else(|| {
            ApiError(ProtocolError::invalid(format!(
                "header {name} must be a non-negative integer"
            )))
        }),
    }
}

#[derive(Serialize)]
struct UploadState {
    upload_id: String,
    offset: u64,
    length: u64,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    blob: Option<String>,
}

fn upload_response(status: StatusCode, state: UploadState) -> Response {
    let offset = state.offset;
    let length = state.length;
    let mut resp = (status, Json(state)).into_response();
    resp.headers_mut()
        .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    resp.headers_mut()
        .insert(UPLOAD_LENGTH, HeaderValue::from(length));
    resp
}

fn io_err(e: std::io::Error) -> ApiError {
    tracing::error!("blob storage: {e}");
    ApiError(ProtocolError::internal("blob storage error"))
}

async fn upload_create(
    State(st): State<SharedState>,
    Authed(auth): Authed,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let length = header_u64(&headers, &UPLOAD_LENGTH)?.ok_or_else(|| {
        ApiError(ProtocolError::invalid(
            "header Upload-Length (the blob's total size) is required",
        ))
    })?;
    if length == 0 {
        return Err(ApiError(ProtocolError::invalid("a blob cannot be empty")));
    }
    if length > st.cfg.max_blob_bytes {
        return Err(ApiError(ProtocolError::new(
            ErrorCode::TooLarge,
            format!(
                "the blob is {length} bytes; at most {} are allowed",
                st.cfg.max_blob_bytes
            ),
        )));
    }
    let id = hex::encode(random_bytes::<16>());
    tokio::fs::File::create(st.upload_dir.join(&id))
        .await
        .map_err(io_err)?;
    let (i, device) = (id.clone(), auth.device);
    let created = st
        .store
        .try_call(move |core: &mut Core| core.create_upload(&i, device, length, now_ms()))
        .await;
    if let Err(e) = created {
        let _ = tokio::fs::remove_file(st.upload_dir.join(&id)).await;
        return Err(ApiError(e));
    }
    let mut resp = upload_response(
        StatusCode::CREATED,
        UploadState {
            upload_id: id.clone(),
            offset: 0,
            length,
            complete: false,
            blob: None,
        },
    );
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/uploads/{id}")).expect("hex is a valid header"),
    );
    Ok(resp)
}

/// The upload `id` of `auth`'s device; someone else's looks like a missing one.
async fn own_upload(st: &SharedState, auth: &AuthInfo, id: &str) -> ApiResult<u64> {
    let not_found = || ApiError(ProtocolError::not_found("no such upload"));
    if !valid_upload_id(id) {
        return Err(not_found());
    }
    let i = id.to_owned();
    let rec = st
        .store
        .call(move |core: &mut Core| core.upload(&i))
        .await?
        .ok_or_else(not_found)?;
    if rec.device != auth.device {
        return Err(not_found());
    }
    Ok(rec.length)
}

async fn file_len(path: &Path) -> ApiResult<u64> {
    Ok(tokio::fs::metadata(path).await.map_err(io_err)?.len())
}

async fn upload_status(
    State(st): State<SharedState>,
    Authed(auth): Authed,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    let length = own_upload(&st, &auth, &id).await?;
    let offset = file_len(&st.upload_dir.join(&id)).await?;
    Ok(upload_response(
        StatusCode::OK,
        UploadState {
            upload_id: id,
            offset,
            length,
            complete: false,
            blob: None,
        },
    ))
}

async fn upload_append(
    State(st): State<SharedState>,
    Authed(auth): Authed,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let length = own_upload(&st, &auth, &id).await?;
    let _guard = UploadGuard::acquire(&st.upload_locks, &id)?;
    let path = st.upload_dir.join(&id);
    let current = file_len(&path).await?;
    let offset = header_u64(&headers, &UPLOAD_OFFSET)?.ok_or_else(|| {
        ApiError(ProtocolError::invalid(
            "header Upload-Offset is required (HEAD the upload to learn it)",
        ))
    })?;
    let declared = header_u64(&headers, &header::CONTENT_LENGTH)?;
    let remaining = check_append(length, current, offset, declared)?;
    take(
        &st.limits.blob_bytes,
        &auth.device,
        declared.unwrap_or(remaining) as f64,
    )?;
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .await
        .map_err(io_err)?;
    let mut written = 0u64;
    let mut stream = body.into_data_stream();
    let idle = Duration::from_millis(st.cfg.http_read_timeout_ms);
    let mut stalled = false;
    loop {
        // A body that stops arriving would hold this upload's lock and a task for good.
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // The client went away: keep what arrived; it can resume from there.
                tracing::debug!("upload {id} interrupted: {e}");
                break;
            }
            Err(_) => {
                tracing::debug!("upload {id}: no data for {idle:?}; keeping what arrived");
                stalled = true;
                break;
            }
        };
        if written + chunk.len() as u64 > remaining {
            drop(file);
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .await
                .map_err(io_err)?;
            f.set_len(current).await.map_err(io_err)?;
            return Err(ApiError(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("the body passes the declared length; {remaining} bytes remained"),
            )));
        }
        file.write_all(&chunk).await.map_err(io_err)?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(io_err)?;
    file.sync_data().await.map_err(io_err)?;
    drop(file);
    let offset = current + written;
    if offset < length {
        let mut resp = upload_response(
            StatusCode::OK,
            UploadState {
                upload_id: id,
                offset,
                length,
                complete: false,
                blob: None,
            },
        );
        if stalled {
            // The rest of the body is unread: this connection cannot carry another request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(resp);
    }
    let hash = finalize(&path, &st.blob_dir).await.map_err(io_err)?;
    let (i, h) = (id.clone(), hash.clone());
    st.store
        .call(move |core: &mut Core| core.finish_upload(&i, &h, length, now_ms()))
        .await?;
    Ok(upload_response(
        StatusCode::OK,
        UploadState {
            upload_id: id,
            offset,
            length,
            complete: true,
            blob: Some(hash),
        },
    ))
}

/// Hashes a finished upload and moves it to its content address.
async fn finalize(path: &Path, blob_dir: &Path) -> std::io::Result<String> {
    let path = path.to_owned();
    let blob_dir: PathBuf = blob_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hash = hex::encode(hasher.finalize());
        let target = blob_dir.join(&hash);
        if target.exists() {
            std::fs::remove_file(&path)?;
        } else {
            std::fs::rename(&path, &target)?;
            std::fs::File::open(&blob_dir)?.sync_all()?;
        }
        Ok(hash)
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn blob_get(
    State(st): State<SharedState>,
    Authed(_auth): Authed,
    UrlPath(hash): UrlPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let not_found = || ApiError(ProtocolError::not_found("no such blob"));
    if !valid_blob_hash(&hash) {
        return Err(not_found());
    }
    let h = hash.clone();
    let size = st
        .store
        .call(move |core: &mut Core| core.blob_size(&h, now_ms()))
        .await?
        .ok_or_else(not_found)?;
    let start = match headers.get(header::RANGE) {
        None => 0,
        Some(r) => parse_range_start(r.as_bytes(), size)
            .map_err(|m| ApiError(ProtocolError::invalid(m)))?,
    };
    let mut file = tokio::fs::File::open(st.blob_dir.join(&hash))
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                not_found()
            } else {
                io_err(e)
            }
        })?;
    if start > 0 {
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(io_err)?;
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{hash}\"")).expect("hex is a valid header"),
    );
    if start > 0 {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", size - 1))
                .expect("digits are a valid header"),
        );
    }
    Ok(resp)
}
