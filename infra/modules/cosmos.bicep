// The Cosmos DB account, its database, the routing-items container and the lease
// container of the change-feed trigger. Key auth is off: the app's identity, and the
// deploying user when one is given, get the built-in data contributor role on the account.

param name string
param location string
param tags object = {}
param databaseName string
param itemsContainerName string
param leaseContainerName string

@description('RU/s shared by the database. 0 makes the account serverless.')
@minValue(0)
param throughput int = 0

@description('Principal ids granted the built-in data contributor role on the account.')
param dataContributorPrincipalIds array

var serverless = throughput == 0

// Cosmos DB Built-in Data Contributor (a data-plane role, defined by every SQL account)
var dataContributorRoleId = '00000000-0000-0000-0000-000000000002'

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  // checkov:skip=CKV_AZURE_99: The Flex Consumption app has no fixed outbound address or VNet here, so no IP or network rule could admit it; key auth is off, so every call needs an Entra token and a data role.
  // checkov:skip=CKV_AZURE_101: Same reason as CKV_AZURE_99: the app reaches the account over its public endpoint.
  name: name
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    capabilities: serverless ? [
      {
        name: 'EnableServerless'
      }
    ] : []
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Enabled'
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
    options: serverless ? {} : {
      throughput: throughput
    }
  }
}

// The worker's hot query is `WHERE c.state = @stage AND c.progress = 'Ready'` (paged,
// perhaps ordered by _ts); recovery asks for `c.progress = 'InProgress' AND
// c.leaseUntil < @now`. Only the fields those queries touch are indexed: the rest of a
// routing item is never filtered on by the worker, and indexing it would cost RUs on
// every claim and finish. A routing component that filters on other fields of the same
// container adds their paths here.
resource items 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: itemsContainerName
  properties: {
    resource: {
      id: itemsContainerName
      partitionKey: {
        paths: [
          '/id'
        ]
        kind: 'Hash'
        version: 2
      }
      indexingPolicy: {
        indexingMode: 'consistent'
        automatic: true
        includedPaths: [
          {
            path: '/id/?'
          }
          {
            path: '/state/?'
          }
          {
            path: '/progress/?'
          }
          {
            path: '/leaseUntil/?'
          }
          {
            path: '/_ts/?'
          }
        ]
        excludedPaths: [
          {
            path: '/*'
          }
        ]
        compositeIndexes: [
          [
            {
              path: '/state'
              order: 'ascending'
            }
            {
              path: '/progress'
              order: 'ascending'
            }
            {
              path: '/_ts'
              order: 'ascending'
            }
          ]
          [
            {
              path: '/progress'
              order: 'ascending'
            }
            {
              path: '/leaseUntil'
              order: 'ascending'
            }
          ]
        ]
      }
    }
  }
}

// The change-feed trigger keeps its checkpoints here. It must exist before the app
// starts: with a managed identity the trigger cannot create it.
resource leases 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: leaseContainerName
  properties: {
    resource: {
      id: leaseContainerName
      partitionKey: {
        paths: [
          '/id'
        ]
        kind: 'Hash'
        version: 2
      }
    }
  }
}

resource dataContributors 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = [for principalId in dataContributorPrincipalIds: {
  parent: account
  name: guid(account.id, principalId, dataContributorRoleId)
  properties: {
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${dataContributorRoleId}'
    principalId: principalId
    scope: account.id
  }
}]

output name string = account.name
output endpoint string = account.properties.documentEndpoint
output databaseName string = database.name
output itemsContainerName string = items.name
output leaseContainerName string = leases.name
