//! `meridian serve`: the gRPC server (every chosen service behind the edge
//! layer, with health and reflection) and the HTTP listener, both draining
//! in-flight requests on SIGTERM/SIGINT.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use meridian_access::{ApiKeyPepper, Authenticator, access_store};
use meridian_edge::EdgeLayer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::cli::ServiceName;
use crate::config::Config;
use crate::http;

/// The gRPC service names each room serves.
fn grpc_names(service: ServiceName) -> &'static [&'static str] {
    match service {
        ServiceName::Ingest => &["meridian.v1.IngestService"],
        ServiceName::Identity => &["meridian.v1.IdentityService"],
        ServiceName::Consent => &["meridian.v1.ConsentService", "meridian.v1.DsrService"],
        ServiceName::Audience => &["meridian.v1.AudienceService"],
    }
}

pub(crate) async fn run(config: Config, services: Vec<ServiceName>) -> anyhow::Result<()> {
    let services: BTreeSet<ServiceName> = if services.is_empty() {
        [
            ServiceName::Ingest,
            ServiceName::Identity,
            ServiceName::Consent,
            ServiceName::Audience,
        ]
        .into()
    } else {
        services.into_iter().collect()
    };

    let policies = Arc::new(crate::policy::load(config.policy_dir.as_deref())?);
    let store = config.open_store().await?;
    let bus = meridian_bus::open_bus(
        store.clone(),
        config.nats_url.as_deref(),
        crate::outbox::jetstream_settings(&config),
    )
    .await
    .context("opening the event bus")?;
    let vault = Arc::new(config.vault(&store)?);
    let identity_rules = meridian_identity::Rules::default()
        .validate()
        .context("identity rules")?;
    let pepper = ApiKeyPepper::load(config.api_key_pepper.as_deref(), &config.data_dir)
        .context("loading the API-key pepper")?;
    let authenticator = Arc::new(Authenticator::new(access_store(&store), pepper));

    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP address {}", config.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let names: Vec<&str> = services
        .iter()
        .flat_map(|service| grpc_names(*service))
        .copied()
        .collect();
    // Reflection advertises health and the services this process runs, nothing else.
    let reflection = || {
        names.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health"),
            |builder, name| builder.with_service_name(*name),
        )
    };

    // The rooms as libraries over this region's store: a process serves some of them and
    // calls the others (the erasure saga reaches every room; profiles list their events).
    let ingest_room = crate::ingest::room(&store, vault.clone(), policies.clone())?;
    let identity_room =
        meridian_identity::IdentityRoom::from_store(&store, vault.clone(), identity_rules.clone())
            .with_event_source(Arc::new(crate::adapters::IngestedEvents(
                ingest_room.clone(),
            )));
    let audience_room = meridian_audience::AudienceRoom::new(
        meridian_audience::store::AudienceStore::new(store.clone()),
    )
    .with_destinations(meridian_audience::sync::DestinationDeps {
        policies: policies.clone(),
        vault: vault.clone(),
        credentials: meridian_audience::destination::Credentials::new(Some(
            config.destination_credentials_dir.clone(),
        )),
        directory: Arc::new(crate::adapters::IdentityDirectory(identity_room.clone())),
        // A consent room of its own (no saga): only its projection and ledger are read.
        consent: Arc::new(crate::adapters::ConsentForDestinations(
            meridian_consent::ConsentRoom::new(store.clone(), vault.clone(), policies.clone()),
        )),
        transport: Arc::new(meridian_destinations::transport::Transport::new(
            meridian_destinations::transport::RetryPolicy::default(),
            0,
        )),
    });
    let rooms = crate::privacy::OtherRooms {
        identity: identity_room,
        ingest: ingest_room,
        audience: audience_room,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut routes = RoutesBuilder::default();
    let mut http_routes = axum::Router::new();
    let mut room_tasks = Vec::new();
    for service in &services {
        match service {
            ServiceName::Ingest => {
                let room = rooms.ingest.clone();
                room_tasks
                    .extend(crate::ingest::start(&room, bus.clone(), shutdown_rx.clone()).await?);
                http_routes = http_routes.merge(meridian_ingest::segment::router(
                    room.clone(),
                    authenticator.clone(),
                ));
                routes.add_service(room.into_server());
            }
            ServiceName::Identity => {
                let room = rooms.identity.clone();
                room_tasks.push(crate::identity::spawn_consumer(
                    bus.clone(),
                    room.clone(),
                    shutdown_rx.clone(),
                ));
                routes.add_service(room.into_server());
            }
            ServiceName::Consent => {
                let room = crate::privacy::consent_room(
                    &config,
                    &store,
                    vault.clone(),
                    policies.clone(),
                    &rooms,
                );
                routes.add_service(room.consent_api().into_server());
                routes.add_service(room.dsr_api().into_server());
                http_routes = http_routes.merge(crate::privacy::http_routes(&config, &room));
                let shutdown = shutdown_rx.clone();
                room_tasks.push(tokio::spawn(async move {
                    room.run_background(Default::default(), shutdown).await
                }));
            }
            ServiceName::Audience => {
                let room = rooms.audience.clone();
                // The read model segments run over follows profiles and events on the bus;
                // its updates commit in the consumer's transaction (on both backends).
                let read_model = Arc::new(meridian_audience::profiles::ReadModelConsumer {
                    room: room.clone(),
                    source: Arc::new(crate::adapters::IdentityProfiles(rooms.identity.clone())),
                });
                for subscription in meridian_audience::profiles::subscriptions() {
                    room_tasks.push(tokio::spawn(meridian_bus::run_consumer(
                        bus.clone(),
                        subscription,
                        read_model.clone(),
                        meridian_bus::LoopSettings::default(),
                        shutdown_rx.clone(),
                    )));
                }
                // Withdrawals, refusals and opt-outs take members back from destinations.
                // PostgreSQL only for now: the handler writes the membership ledger through
                // its own connections, which would wait on SQLite's one write lock.
                if matches!(store, meridian_store::Store::Postgres(_)) {
                    room_tasks.push(tokio::spawn(meridian_bus::run_consumer(
                        bus.clone(),
                        meridian_audience::sync::withdrawal_subscription(),
                        Arc::new(meridian_audience::sync::ConsentWithdrawals {
                            room: room.clone(),
                        }),
                        meridian_bus::LoopSettings::default(),
                        shutdown_rx.clone(),
                    )));
                } else {
                    tracing::warn!(
                        "consent withdrawals not followed on the embedded store yet: members leave destinations at the next sync"
                    );
                }
                // Full recomputes on each segment's schedule (what leaves a time window
                // without a new event); slots are claimed in the store, once per replica set.
                {
                    let room = room.clone();
                    let shutdown = shutdown_rx.clone();
                    room_tasks.push(tokio::spawn(async move {
                        room.run_scheduled_recomputes(std::time::Duration::from_secs(30), shutdown)
                            .await
                    }));
                }
                routes.add_service(meridian_audience::AudienceApi::new(room).into_server());
            }
        }
    }
    for name in &names {
        health_reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    routes.add_service(health_service);
    routes.add_service(
        reflection()
            .build_v1()
            .context("building gRPC reflection")?,
    );
    routes.add_service(
        reflection()
            .build_v1alpha()
            .context("building gRPC reflection")?,
    );

    let grpc_shutdown = wait_for(shutdown_rx.clone());
    let grpc_server = tonic::transport::Server::builder()
        .layer(EdgeLayer::new(authenticator))
        .add_routes(routes.routes())
        // Without TCP_NODELAY a response's trailing frame can wait for the client's delayed
        // ACK (~40 ms on Linux): every unary call would take at least that long.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            grpc_shutdown,
        );
    let http_server = http::serve(
        http_listener,
        store.clone(),
        http_routes,
        wait_for(shutdown_rx.clone()),
    );

    let mut signals = ShutdownSignals::install()?;
    // Scripts read these two lines to find the ports.
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "grpc listening on {grpc_addr}")?;
        writeln!(stdout, "http listening on {http_addr}")?;
        stdout.flush()?;
    }
    tracing::info!(
        %grpc_addr,
        %http_addr,
        backend = store.backend().as_str(),
        bus = if config.nats_url.is_some() { "jetstream" } else { "in-process" },
        region = %config.region,
        policy_version = policies.policy_version(),
        services = ?names,
        "meridian started"
    );

    let relay_task = tokio::spawn(meridian_bus::run_relay(
        bus.clone(),
        meridian_bus::LoopSettings::default(),
        shutdown_rx.clone(),
    ));
    let grpc_task = tokio::spawn(grpc_server);
    let http_task = tokio::spawn(http_server);

    signals.recv().await;
    tracing::info!("shutting down: draining in-flight requests");
    health_reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for name in names {
        health_reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let _ = shutdown_tx.send(true);

    let drained = tokio::time::timeout(config.shutdown_grace, async {
        let grpc = grpc_task.await;
        let http = http_task.await;
        let relay = relay_task.await;
        for task in room_tasks {
            let _ = task.await;
        }
        (grpc, http, relay)
    })
    .await;
    match drained {
        Ok((grpc, http, relay)) => {
            grpc.context("gRPC server task")?.context("gRPC server")?;
            http.context("HTTP server task")?.context("HTTP server")?;
            relay.context("outbox relay task")?;
            tracing::info!("stopped cleanly");
        }
        Err(_) => tracing::warn!(
            grace_seconds = config.shutdown_grace.as_secs(),
            "requests still running after the grace period; stopping anyway"
        ),
    }
    store.close().await;
    Ok(())
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    // An error means the sender is gone, which is a shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// SIGTERM (Kubernetes) and SIGINT (Ctrl-C), registered before the server
/// announces itself, so a signal sent right after start is never lost to the
/// default action.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
