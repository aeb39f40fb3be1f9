//! The async runtime lapin is given: smol's reactor, and an executor that the AMQP driver runs
//! on its own thread (instead of smol's global executor and its thread). The TCP stream it
//! connects reads through the oversized-body filter (`oversize`).

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_rs::Smol;
use async_rs::traits::{Executor, Reactor, RuntimeKit};
use async_rs::util::{Task, TaskImpl};
use futures_lite::{AsyncRead, AsyncWrite, Stream};
use smol::Async;

use super::oversize::{Filter, Filtered, Skipped};

use crate::tls::MaybeTls;

#[derive(Clone, Debug)]
pub(super) struct Kit {
    tasks: Arc<smol::Executor<'static>>,
    /// Bodies larger than this are skipped as they arrive...
    max_body: u64,
    /// ...and recorded here for the driver.
    skipped: Skipped,
}

impl Kit {
    pub(super) fn new(tasks: Arc<smol::Executor<'static>>, max_body: u64, skipped: Skipped) -> Kit {
        Kit {
            tasks,
            max_body,
            skipped,
        }
    }
}

impl Kit {
    /// The oversized-body filter for one new connection.
    pub(super) fn filter(&self) -> Filter {
        Filter::new(self.max_body, self.skipped.clone())
    }

    /// Runs `work` on the driver's executor to its end, whoever waits for it.
    pub(super) fn detach(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(work).detach();
    }
}

impl RuntimeKit for Kit {}

impl Executor for Kit {
    type Task<T: Send + 'static> = KitTask<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        smol::block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: F,
    ) -> Task<KitTask<T>> {
        KitTask(Some(self.tasks.spawn(f))).into()
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Task<KitTask<T>> {
        KitTask(Some(smol::unblock(f))).into()
    }
}

impl Reactor for Kit {
    /// `amqps://` connections are TLS over the same socket (made by the driver's connect);
    /// the filter reads the AMQP frames, so it sits above TLS.
    type TcpStream = Filtered<MaybeTls<Async<std::net::TcpStream>>>;
    type Sleep = <Smol as Reactor>::Sleep;

    fn register<H: Read + Write + AsFd + AsRawFd + Send + 'static>(
        &self,
        socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        Smol.register(socket)
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        Smol.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        Smol.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let filter = self.filter();
        let connecting = Smol.tcp_connect_addr(addr);
        async move {
            let socket = connecting.await?;
            Ok(Filtered::new(MaybeTls::Plain(socket), filter))
        }
    }
}

/// A task on the driver's executor (or smol's blocking pool). Dropping the handle
/// detaches the task; a handle already cancelled or detached never completes.
#[derive(Debug)]
pub(super) struct KitTask<T>(Option<smol::Task<T>>);

impl<T> Future for KitTask<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.0.as_mut() {
            Some(task) => Pin::new(task).poll(cx),
            None => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> TaskImpl for KitTask<T> {
    fn cancel<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Pin<Box<dyn Future<Output = Option<T>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let task = self.0.take();
        Box::pin(async move {
            match task {
                Some(task) => task.cancel().await,
                None => None,
            }
        })
    }

    fn detach(&mut self) {
        if let Some(task) = self.0.take() {
            task.detach();
        }
    }
}
