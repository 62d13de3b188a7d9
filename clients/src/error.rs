use natter_signaling::ProtocolError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request.
    #[error("server refused: {0}")]
    Server(#[from] ProtocolError),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed before an answer arrived.
    #[error("connection closed")]
    Closed,
    /// The call's media failed.
    #[error("{0}")]
    Media(#[from] natter_media::MediaError),
    /// The server said something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<natter_signaling::ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}
