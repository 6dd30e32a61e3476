//! `otactl token create|list|revoke`.

use ota_proto::v1 as pb;

use super::{Ctx, id};
use crate::cli::{RoleArg, TokenCmd, TokenCreateArgs};
use crate::human;
use crate::views::{CreatedTokenView, TokenListView, TokenView};

/// Resolves `token create`.
pub fn resolve_create(a: &TokenCreateArgs) -> anyhow::Result<pb::CreateTokenRequest> {
    let name = a.name.trim();
    if name.is_empty() {
        anyhow::bail!("the token name is empty (say who it is for: \"alice\", \"ci\")");
    }
    let ttl_s = match a.ttl {
        None => 0,
        Some(d) if d.as_secs() == 0 => anyhow::bail!("--ttl must be at least one second"),
        Some(d) => d.as_secs(),
    };
    Ok(pb::CreateTokenRequest {
        name: name.to_string(),
        role: role(a.role) as i32,
        ttl_s,
    })
}

fn role(r: RoleArg) -> pb::Role {
    match r {
        RoleArg::Viewer => pb::Role::Viewer,
        RoleArg::Operator => pb::Role::Operator,
        RoleArg::Admin => pb::Role::Admin,
    }
}

/// Runs a `token` command.
pub async fn run(ctx: &Ctx, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create(a) => {
            let req = resolve_create(&a)?;
            let api = ctx.api().await?;
            let r = api.call(api.access().create_token(api.unary(req))).await?;
            let view = CreatedTokenView {
                token: r.token.clone(),
                info: r.info.as_ref().map(TokenView::new),
            };
            ctx.out.show(&view, human::created_token)?;
        }
        TokenCmd::List => {
            let api = ctx.api().await?;
            let r = api
                .call(
                    api.access()
                        .list_tokens(api.unary(pb::ListTokensRequest {})),
                )
                .await?;
            let view = TokenListView {
                tokens: r.tokens.iter().map(TokenView::new).collect(),
            };
            ctx.out.show(&view, human::token_list)?;
        }
        TokenCmd::Revoke(a) => {
            let token_id = id("token", &a.id)?;
            let api = ctx.api().await?;
            let t = api
                .call(
                    api.access()
                        .revoke_token(api.unary(pb::RevokeTokenRequest { id: token_id })),
                )
                .await?;
            ctx.out.show(&TokenView::new(&t), human::token)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn create_requests() {
        let r = resolve_create(&TokenCreateArgs {
            name: " ci ".into(),
            role: RoleArg::Operator,
            ttl: Some(Duration::from_secs(86_400)),
        })
        .unwrap();
        assert_eq!(
            r,
            pb::CreateTokenRequest {
                name: "ci".into(),
                role: 2,
                ttl_s: 86_400
            }
        );
        let never = resolve_create(&TokenCreateArgs {
            name: "a".into(),
            role: RoleArg::Viewer,
            ttl: None,
        })
        .unwrap();
        assert_eq!(never.ttl_s, 0);
        assert!(
            resolve_create(&TokenCreateArgs {
                name: "".into(),
                role: RoleArg::Admin,
                ttl: None
            })
            .is_err()
        );
        assert!(
            resolve_create(&TokenCreateArgs {
                name: "a".into(),
                role: RoleArg::Admin,
                ttl: Some(Duration::ZERO)
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn tokens_against_the_fake() {
        use crate::cli::{IdArg, OutputFormat};
        use crate::fake;
        let access = fake::Access::default();
        let log = access.log.clone();
        let server = fake::serve(fake::Rollouts::default(), access).await;

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Table);
        let create = TokenCmd::Create(TokenCreateArgs {
            name: "ci".into(),
            role: RoleArg::Operator,
            ttl: Some(Duration::from_secs(3600)),
        });
        run(&ctx, create).await.unwrap();
        let out = fake::printed(&buf);
        assert!(
            out.starts_with("Token created for ci (operator), id tok-1, expires never."),
            "{out}"
        );
        assert!(out.contains("\n    tok-1.s3cr3t\n"), "{out}");

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Json);
        run(&ctx, TokenCmd::List).await.unwrap();
        let list: serde_json::Value = serde_json::from_str(&fake::printed(&buf)).unwrap();
        assert_eq!(
            list["tokens"][0]["role"],
            serde_json::json!({"code": 1, "name": "viewer"})
        );

        let (ctx, buf) = fake::ctx(&server.url, OutputFormat::Table);
        run(&ctx, TokenCmd::Revoke(IdArg { id: "tok-1".into() }))
            .await
            .unwrap();
        assert_eq!(
            fake::printed(&buf),
            "Token tok-1 (ci, viewer) is revoked.\n"
        );
        let (ctx, _) = fake::ctx(&server.url, OutputFormat::Table);
        let err = run(&ctx, TokenCmd::Revoke(IdArg { id: "tok-9".into() }))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no token \"tok-9\"");

        let log = log.lock().unwrap();
        assert!(
            log[0].contains("role: Operator") && log[0].contains("ttl_s: 3600"),
            "{log:?}"
        );
    }
}
