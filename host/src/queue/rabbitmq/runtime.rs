//! The dedicated runtime every RabbitMQ component runs on, and connecting to the broker.

use std::future::Future;
use std::sync::Arc;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::runtime::{Handle, Runtime};

use super::{RabbitConfig, RabbitError};

/// A one-thread Tokio runtime owned by a component. Dropping it never blocks and is allowed
/// from async code (it shuts down in the background), so components can be dropped anywhere.
pub(crate) struct OwnedRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl OwnedRuntime {
    pub(crate) fn new(name: &str) -> Result<OwnedRuntime, RabbitError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| RabbitError::Runtime(e.to_string()))?;
        let handle = runtime.handle().clone();
        Ok(OwnedRuntime {
            runtime: Some(runtime),
            handle,
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    pub(crate) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The broker URI (built field by field, so credentials and vhost need no escaping).
fn amqp_uri(cfg: &RabbitConfig) -> AMQPUri {
    AMQPUri {
        scheme: AMQPScheme::AMQP,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: cfg.username.clone(),
                password: cfg.password.clone(),
            },
            host: cfg.host.clone(),
            port: cfg.port,
        },
        vhost: cfg.virtual_host.clone(),
        query: AMQPQueryString::default(),
    }
}

/// Connect once (no retries: callers own their retry policy). Must run inside a Tokio
/// runtime; lapin's I/O runs on it.
pub(crate) async fn connect(cfg: &RabbitConfig, role: &str) -> Result<Connection, RabbitError> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("{}-{role}", cfg.app_name).into());
    let err = |reason: String| RabbitError::Connect {
        endpoint: cfg.endpoint(),
        reason,
    };
    match tokio::time::timeout(
        cfg.connect_timeout,
        Connection::connect_uri(amqp_uri(cfg), props),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("timed out after {:?}", cfg.connect_timeout))),
    }
}

/// A connection with one open channel.
pub(crate) async fn open_channel(
    cfg: &RabbitConfig,
    role: &str,
) -> Result<(Arc<Connection>, Channel), RabbitError> {
    let conn = connect(cfg, role).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| RabbitError::amqp("channel.open", e))?;
    Ok((Arc::new(conn), channel))
}

/// Close a connection, ignoring errors (it may already be dead).
pub(crate) async fn close_quietly(conn: &Connection) {
    if conn.status().connected() {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            conn.close(200, "closing".into()),
        )
        .await;
    }
}

/// Wait before reconnect attempt number `attempt` (DP3's backoff), or until told to stop.
pub(crate) async fn reconnect_pause(
    cfg: &RabbitConfig,
    attempt: usize,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        () = tokio::time::sleep(cfg.reconnect_delay(attempt)) => {}
        _ = stop.changed() => {}
    }
}
